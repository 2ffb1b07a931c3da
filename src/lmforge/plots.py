"""Plots people would rather look at than read: loss curves, confusion matrices, loss by
context position, compression reports (Agg backend, no display needed)."""

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


def plot_position_loss(position_loss: Sequence[float], path: str | Path) -> None:
    """Mean loss by position in the context window: how much more context helps."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(np.arange(1, len(position_loss) + 1), position_loss, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context (position in the window + 1)")
    ax.set_ylabel("mean cross-entropy (nats/token)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_compression_report(rows: Sequence[dict], path: str | Path) -> None:
    """One bar chart per figure (size, parameters, quality, speed) across compressed runs."""
    names = [Path(row["run"]).name for row in rows]
    panels = [
        ("size_mb", "weights on disk (MB)"),
        ("parameters", "non-zero parameters"),
        ("bits_per_byte", "bits per byte (lower is better)"),
        ("decode_tokens_per_s", "greedy decoding (tokens/s)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), dpi=110)
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.bar(names, [row[key] for row in rows], color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
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
