"""Shared by the end-to-end tests: one small trained run, a CLI runner, the user-error check."""

import subprocess
import sys
from pathlib import Path

import pytest

TRAIN_SETS = [
    "--set",
    "model.n_layer=2",
    "--set",
    "model.n_head=2",
    "--set",
    "model.n_embd=32",
    "--set",
    "model.block_size=32",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.max_steps=20",
    "--set",
    "train.eval_interval=10",
    "--set",
    "train.eval_batches=2",
    "--set",
    "train.checkpoint_interval=10",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.progress=false",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=300
    )


def assert_user_error(code: int, capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-step run on a small corpus, through the real console entry point."""
    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus.txt"
    paragraphs = [f"Paragraph {i}: the cat sat on the mat number {i % 7}." for i in range(400)]
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    data, run = root / "data", root / "run"
    done = run_cli("prepare", "--input", str(corpus), "--out", str(data), "--vocab-size", "300")
    assert done.returncode == 0, done.stderr
    done = run_cli("pretrain", "--data", str(data), "--out", str(run), *TRAIN_SETS)
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout
    return run
