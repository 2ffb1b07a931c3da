"""Compressed run directories: they load with load_run, keep what they promise, and report."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, RunConfig, TrainConfig
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.jobs.compress import compress_report, count_parameters, prune_run, quantize_run
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.model import GPT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.layout import PRUNING_FILE
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer

TEXT = "\n\n".join(
    f"Section {i}: the kettle on shelf {i % 9} holds {i * 7 % 13} cups of tea, said the clerk."
    for i in range(300)
)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small trained-looking GPT run and a data directory made with its tokenizer."""
    root = tmp_path_factory.mktemp("compress")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    data = root / "data"
    prepare(PrepareOptions(inputs=[str(root / "corpus.txt")], out=data, vocab_size=300))
    tokenizer = Tokenizer.load(data / "tokenizer.json")
    model_cfg = ModelConfig(
        n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=tokenizer.vocab_size
    )
    cfg = RunConfig(model=model_cfg, train=TrainConfig(batch_size=8, progress=False))
    torch.manual_seed(0)
    run = root / "run"
    ckpt.write_run_files(run, cfg, tokenizer)
    ckpt.save_weights(GPT(model_cfg), run / layout.MODEL_FILE)
    return run, data


def test_quantized_run_loads_int8_and_shrinks_its_linear_weights(
    float_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = float_run
    summary = quantize_run(run, tmp_path / "q8")
    assert summary["linear_shrink"] > 3.5
    weights = (tmp_path / "q8" / "model.int8.safetensors").stat().st_size
    assert summary["model_bytes_after"] == weights
    assert summary["shrink"] == summary["model_bytes_before"] / weights
    assert summary["shrink"] > 3.0  # the whole file, not only the linear layers
    assert summary["run_bytes_after"] >= weights + (tmp_path / "q8" / "config.json").stat().st_size
    assert not (tmp_path / "q8" / layout.MODEL_FILE).exists()
    _, loaded, tokenizer = load_run(tmp_path / "q8")
    _, original, _ = load_run(run)
    ids = torch.tensor([tokenizer.encode(TEXT[:200])[:32]])
    with torch.no_grad():
        reference = original(ids)
        diff = (loaded(ids) - reference).abs()
    assert float(diff.mean()) < 0.05 * float(reference.std())
    with pytest.raises(CheckpointError, match="already int8"):
        quantize_run(tmp_path / "q8", tmp_path / "again")


def test_magnitude_pruned_run_with_recovery_keeps_its_zeros(
    float_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = float_run
    summary = prune_run(run, tmp_path / "p50", 0.5, finetune_steps=20, data_dir=data, lr=1e-3)
    assert summary["zero_fraction_by_layer"]["total"] == pytest.approx(0.5, abs=1e-3)
    first, last = summary["finetune_loss"]
    assert last < first
    _, model, _ = load_run(tmp_path / "p50")
    _, original, _ = load_run(run)
    assert count_parameters(model) < count_parameters(original)
    record = json.loads((tmp_path / "p50" / PRUNING_FILE).read_text())
    assert record["method"] == "magnitude"


def test_head_pruned_run_is_smaller_on_disk_and_reloads(
    float_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = float_run
    summary = prune_run(run, tmp_path / "h25", 0.25, structured="heads")
    assert summary["params_after"] < summary["params_before"]
    cfg, _, _ = load_run(tmp_path / "h25")
    assert (cfg.model.n_head, cfg.model.head_dim) == (3, 16)
    size = (tmp_path / "h25" / layout.MODEL_FILE).stat().st_size
    assert size < (run / layout.MODEL_FILE).stat().st_size


def test_report_compares_runs_and_draws_them(float_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = float_run
    quantize_run(run, tmp_path / "q8")
    (tmp_path / "held.txt").write_text(TEXT[:3000], encoding="utf-8")
    rows = compress_report([run, tmp_path / "q8"], tmp_path / "held.txt", tmp_path / "r.png")
    assert [Path(r["run"]).name for r in rows] == ["run", "q8"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"] / 2
    assert all(r["bits_per_byte"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_compression_requests(float_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = float_run
    with pytest.raises(ConfigError, match="--data DIR"):
        prune_run(run, tmp_path / "x", 0.5, finetune_steps=5)
    with pytest.raises(ConfigError, match="--structured"):
        prune_run(run, tmp_path / "x", 0.5, structured="layers")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        compress_report([run], tmp_path / "empty.txt", tmp_path / "r.png")
    assert not (tmp_path / "x").exists()
