"""Shared fixtures: tiny configs, a seeded generator, a tiny corpus and a prepared data dir."""

from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig

TINY_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.\n\n"
)


@pytest.fixture(autouse=True)
def float32_wins_the_precision_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.dtype=auto (the default) picks bf16 only where the CPU measures it faster, which
    differs between machines; in-process tests see float32 win, so their figures do not depend
    on the CPU. Tests of the choice itself pass their own timings."""
    monkeypatch.setattr(
        "lmforge.train.runtime.precision_speeds",
        lambda width: {"float32": 1.0, "bfloat16": 0.01},
    )
    monkeypatch.setattr(  # the session times the run's own model: tokens/s
        "lmforge.train.runtime.model_speeds",
        lambda model, rows, length: {"float32": 1.0, "bfloat16": 0.01},
    )
    monkeypatch.setattr(  # Muon's Newton-Schulz: seconds, float32 faster
        "lmforge.train.runtime.newton_schulz_seconds",
        lambda width: {"float32": 0.01, "bfloat16": 1.0},
    )


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)


@pytest.fixture
def tiny_train_cfg() -> TrainConfig:
    return TrainConfig(
        max_steps=12,
        batch_size=4,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        eval_interval=4,
        eval_batches=2,
        checkpoint_interval=4,
        log_interval=1,
        progress=False,
    )


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A small directory corpus of distinct documents (about 40 KB)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(40):
        lines = [f"Document {i}, line {j}: {TINY_TEXT.split('.')[j % 3]}." for j in range(12)]
        (root / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def prepared_dir(tmp_path: Path, corpus_dir: Path) -> Path:
    """corpus_dir prepared with a char tokenizer (fast to train, small vocabulary)."""
    from lmforge.jobs.prepare import PrepareOptions, prepare

    out = tmp_path / "data"
    prepare(PrepareOptions(inputs=[str(corpus_dir)], out=out, tokenizer="char"))
    return out
