"""Plots people would rather look at than read: loss curves, confusion matrices, loss by
context position, compression reports, attention maps and per-token losses (Agg backend, no
display needed)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lmforge.rundir.files import atomic_path


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


def shown_piece(piece: str, width: int = 10) -> str:
    """A token's text as a label: a space shows as ␣, a newline as ↵, a tab as \\t, nothing
    as ∅; longer than `width` characters, cut with …"""
    text = piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "\\t") or "∅"
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_attention(
    maps: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    pieces: Sequence[str],
    path: str | Path,
) -> None:
    """Attention probabilities (L, H, T, T) as heat maps, written atomically as a PNG: row q of
    a map is how query token q spreads its attention over the key tokens (columns). One head
    fills the picture, its token pieces on both axes; several make a grid, a row per layer
    and a column per head, with the pieces on the outer axes while they stay readable."""
    maps = np.asarray(maps, dtype=np.float64)
    n_rows, n_cols, T = maps.shape[0], maps.shape[1], maps.shape[-1]
    single = n_rows == n_cols == 1
    panel = min(max(0.3 * T + 1.5, 4.5), 12.0) if single else min(max(0.15 * T + 1.0, 2.0), 4.0)
    panel = min(panel, max(1.6, 28.0 / max(n_rows, n_cols)))  # a 12 × 12 grid stays printable
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(panel * n_cols + 1.4, panel * n_rows + 0.6),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    labels = [shown_piece(p) for p in pieces]
    readable = len(labels) <= (48 if single else 16)  # beyond, the labels would overlap
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(maps[r, c], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {head}", fontsize=10 if single else 8)
            bottom, left = r == n_rows - 1, c == 0
            _token_ticks(ax, labels if readable else [], bottom, left, 8 if single else 6)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention probability")
    fig.supxlabel("key: the token attended to")
    fig.supylabel("query: the token attending")
    _save(fig, Path(path))


def _token_ticks(ax: plt.Axes, labels: list[str], bottom: bool, left: bool, size: float) -> None:
    """Token pieces as tick labels on the bottom (keys) and left (queries) of a panel."""
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=labels if bottom else [], rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels=labels if left else [], fontsize=size)
    ax.tick_params(length=0)


def plot_token_losses(
    pieces: Sequence[str],
    ids: Sequence[int],
    losses: Sequence[float | None],
    path: str | Path,
    title: str = "loss of each token",
    per_row: int = 12,
) -> None:
    """Each token as a cell of a strip (per_row cells a row), coloured by its loss from the
    prompt's lowest to its highest, with its piece and id written in it and a colour bar; a
    token without a loss (a GPT's first, a BERT's [CLS]) is blank. Written atomically as a PNG."""
    n = len(pieces)
    per_row = max(1, min(per_row, n))
    rows = -(-n // per_row)  # ceil(n / per_row)
    values = np.full(rows * per_row, np.nan)
    values[:n] = [np.nan if value is None else value for value in losses]
    known = values[np.isfinite(values)]
    low, top = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    cmap = plt.get_cmap("magma_r").with_extremes(bad="white")
    fig, ax = plt.subplots(
        figsize=(1.05 * per_row + 1.6, 0.85 * rows + 1.2), dpi=110, layout="constrained"
    )
    grid = np.ma.masked_invalid(values.reshape(rows, per_row))
    image = ax.imshow(grid, cmap=cmap, vmin=low, vmax=max(top, low + 1e-6), aspect="auto")
    for i, (piece, token) in enumerate(zip(pieces, ids, strict=True)):
        r, c = divmod(i, per_row)
        dark = np.isfinite(values[i]) and values[i] > low + 0.55 * (top - low)
        color = "white" if dark else "black"
        ax.text(c, r - 0.12, shown_piece(piece), ha="center", va="center", fontsize=9, color=color)
        ax.text(c, r + 0.28, str(token), ha="center", va="center", fontsize=6.5, color=color)
    ax.set_xticks(np.arange(per_row + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="lightgrey", linewidth=1.0)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="nats")
    _save(fig, Path(path))


def _save(fig: Figure, path: Path) -> None:
    """Write fig as a PNG via a temporary file and rename (lmforge.rundir.files.atomic_path);
    readers never see half a file."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
