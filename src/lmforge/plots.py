"""Plots people would rather look at than read: loss curves and confusion matrices (Agg backend,
no display needed)."""

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_loss_curves(
    train: list[tuple[int, float]], val: list[tuple[int, float]], path: str | Path
) -> None:
    """Train and validation loss against step, written atomically as a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, Path(path))


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path
) -> None:
    """Counts of (true, predicted) label pairs as a heat map with the count in each cell,
    written atomically as a PNG; rows are true labels, columns predicted ones."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(label_names), len(label_names))
    k = len(label_names)
    size = min(3.0 + 0.6 * k, 16.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=list(label_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(label_names))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if k <= 30:  # beyond that the numbers would not be readable anyway
        dark = counts > counts.max() / 2  # white text on the dark half of the scale
        for t in range(k):
            for p in range(k):
                color = "white" if dark[t, p] else "black"
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", color=color)
    fig.tight_layout()
    _save(fig, Path(path))


def _save(fig: Figure, path: Path) -> None:
    """Write fig as a PNG via a temporary file and rename; readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
