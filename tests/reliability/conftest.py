"""Shared by the reliability tests: a tiny model's settings and a prepared toy corpus."""

from pathlib import Path

from lmforge.cli.main import main

TINY_SETS = [
    *("--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32"),
    *("--set", "model.block_size=32", "--set", "train.batch_size=4"),
    *("--set", "train.eval_batches=2", "--set", "train.warmup_steps=2"),
    *("--set", "train.progress=false", "--set", "train.dtype=float32"),
]


def prepare_toy_corpus(root: Path) -> Path:
    """Write 300 short paragraphs to root/corpus.txt, prepare them in process; root/data."""
    lines = [f"Paragraph {i}: the cat sat on the mat number {i % 7}." for i in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(lines), encoding="utf-8")
    argv = ["prepare", "--input", str(root / "corpus.txt"), "--out", str(root / "data")]
    assert main([*argv, "--vocab-size", "300", "--workers", "1"]) == 0
    return root / "data"
