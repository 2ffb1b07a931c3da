"""Evaluation metrics: perplexity over a token split or a text (sliding windows, bits per byte),
and classification metrics."""

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import Batch
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError, DataError
from lmforge.model.onednn import packed_linears


def perplexity_from_nll(mean_nll: float) -> float:
    """PPL = exp(−(1/N) Σ_i ln P(w_i | w_<i)): e to the mean negative log-likelihood in nats.
    The exponent is capped at 700 so a diverged model reports a huge number, not an overflow."""
    return math.exp(min(mean_nll, 700.0))


@dataclass(frozen=True, slots=True)
class Perplexity:
    """Mean next-token cross-entropy and its exponential over the tokens scored."""

    loss: float
    perplexity: float
    tokens: int


@torch.inference_mode()
def split_perplexity(
    model: nn.Module, shards: TokenShards, split: str, block_size: int, batch_size: int = 16
) -> Perplexity:
    """exp(mean CE) over a whole split, read in non-overlapping windows (each token scored once)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    windows = list(shards.sequential_windows(split, block_size + 1))
    with packed_linears(model):
        for start in range(0, len(windows), batch_size):
            chunk = torch.stack(windows[start : start + batch_size]).to(device)  # (B, T+1)
            logits = model(chunk[:, :-1])  # (B, T, V)
            targets = chunk[:, 1:].reshape(-1)
            flat = logits.reshape(-1, logits.size(-1)).float()
            total += F.cross_entropy(flat, targets, reduction="sum").item()
            count += targets.numel()
    loss = total / max(count, 1)
    return Perplexity(loss=loss, perplexity=perplexity_from_nll(loss), tokens=count)


@dataclass(frozen=True, slots=True)
class Window:
    """Inputs ids[begin:end] predict targets ids[begin+1:end+1]; those from index `first` on
    are scored here (the earlier ones were scored by a previous window)."""

    begin: int
    first: int
    end: int


def sliding_windows(n_ids: int, window: int, stride: int) -> list[Window]:
    """Windows over n_ids tokens that score every target (ids[1:]) exactly once.

    Each window starts `stride` after the previous and scores the targets the previous did not
    reach, so every target but the first window's has at least window - stride tokens of
    context. stride == window is plain chunking.
    """
    if not 1 <= stride <= window:
        raise ConfigError(f"stride must be between 1 and the window ({window}); got {stride}")
    windows, scored, begin = [], 0, 0  # scored: the last target index scored so far
    while scored < n_ids - 1:
        end = min(begin + window, n_ids - 1)
        windows.append(Window(begin, scored + 1, end))
        scored, begin = end, begin + stride
    return windows


@dataclass(frozen=True, slots=True)
class TextScore:
    """How well a causal LM predicts a text: per token, per byte, and by position in the window."""

    loss: float  # mean NLL per token (nats)
    perplexity: float
    bits_per_byte: float  # total NLL / (bytes · ln 2): comparable across tokenizers
    tokens: int
    bytes: int
    tokens_per_s: float
    position_loss: list[float]  # mean NLL by position in the window (index 0: 1 token of context)

    def as_dict(self) -> dict[str, Any]:
        """The JSON record of `evaluate --json` (the position curve left out)."""
        keys = ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "tokens_per_s")
        return {key: getattr(self, key) for key in keys}


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total NLL in nats over the text's UTF-8 bytes, in bits: Σ −ln p / (bytes · ln 2)."""
    return total_nll / (max(n_bytes, 1) * math.log(2))


@torch.inference_mode()
def token_losses(
    model: nn.Module, ids: torch.Tensor, window: int, stride: int, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of every target ids[1:] (N-1,) under sliding windows, and each one's position in
    its window (N-1,). Full-length windows run batch_size at a time."""
    model.eval()
    device = next(model.parameters()).device
    losses = torch.empty(len(ids) - 1)
    positions = torch.empty(len(ids) - 1, dtype=torch.long)
    spans = sliding_windows(len(ids), window, stride)
    groups = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    with packed_linears(model):
        for group in _same_length_groups(groups):
            inputs = torch.stack([ids[w.begin : w.end] for w in group]).to(device)
            targets = torch.stack([ids[w.begin + 1 : w.end + 1] for w in group]).to(device)
            logits = model(inputs).float()  # (B, T, V)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu()
            for row, w in enumerate(group):
                keep = slice(w.first - w.begin - 1, w.end - w.begin)
                losses[w.first - 1 : w.end] = nll[row, keep]
                positions[w.first - 1 : w.end] = torch.arange(keep.start, keep.stop)
    return losses, positions


def _same_length_groups(groups: list[list[Window]]) -> Iterator[list[Window]]:
    """Split each group where the window length changes (only the last window is shorter)."""
    for group in groups:
        lengths = sorted({w.end - w.begin for w in group}, reverse=True)
        for length in lengths:
            yield [w for w in group if w.end - w.begin == length]


def score_text(
    model: nn.Module, ids: Sequence[int], n_bytes: int, window: int, stride: int | None = None
) -> TextScore:
    """Loss, perplexity, bits per byte and the position curve of token ids (the first is a
    context-only start token, e.g. <|endoftext|>, so every token of the text is scored)."""
    if len(ids) < 2:
        raise DataError("the text has no tokens to score; give a longer text")
    start = time.perf_counter()
    losses, positions = token_losses(model, torch.tensor(ids), window, stride or window)
    seconds = time.perf_counter() - start
    total, count = float(losses.double().sum()), len(losses)
    by_position = torch.zeros(window, dtype=torch.float64).index_add_(0, positions, losses.double())
    seen = torch.bincount(positions, minlength=window).clamp(min=1)
    loss = total / count
    return TextScore(
        loss=loss,
        perplexity=perplexity_from_nll(loss),
        bits_per_byte=bits_per_byte(total, n_bytes),
        tokens=count,
        bytes=n_bytes,
        tokens_per_s=count / max(seconds, 1e-9),
        position_loss=(by_position / seen)[: int(positions.max()) + 1].tolist(),
    )


def classification_metrics(
    predictions: Sequence[int] | torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | np.ndarray,
    n_classes: int,
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision / recall / F1, support and the confusion matrix.

    Per class c: P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2·TP/(2·TP+FP+FN), each 0 where its
    denominator is 0 (scikit-learn's zero_division=0). Macro scores average the classes that
    occur among the labels or the predictions, as scikit-learn's average="macro" does, so a
    class absent from both does not count as a zero. confusion[t][p] counts examples of true
    class t predicted as p. Every value is a plain int or float (JSON-ready).
    """
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    true = np.asarray(labels, dtype=np.int64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"{len(pred)} predictions for {len(true)} labels")
    if len(true) and (min(pred.min(), true.min()) < 0 or max(pred.max(), true.max()) >= n_classes):
        raise ValueError(f"class ids must lie in [0, {n_classes})")
    confusion = np.bincount(true * n_classes + pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )  # (true, predicted)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(1), confusion.sum(0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)  # 2TP + FP + FN = support + predicted
    present = (support + predicted) > 0
    macro = [float(x[present].mean()) if present.any() else 0.0 for x in (precision, recall, f1)]
    return {
        "n": len(true),
        "accuracy": float(tp.sum() / len(true)) if len(true) else 0.0,
        "macro_precision": macro[0],
        "macro_recall": macro[1],
        "macro_f1": macro[2],
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion_matrix": confusion.tolist(),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def format_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str]) -> str:
    """The confusion matrix as a text table: one row per true label, one column per predicted."""
    corner = "true \\ predicted"
    width = max(len(str(v)) for row in matrix for v in row) if len(matrix) else 1
    width = max(width, *(len(name) for name in label_names))
    first = max(len(corner), *(len(name) for name in label_names))
    lines = [" ".join([corner.ljust(first), *(name.rjust(width) for name in label_names)])]
    for name, row in zip(label_names, matrix, strict=True):
        lines.append(" ".join([name.ljust(first), *(str(v).rjust(width) for v in row)]))
    return "\n".join(lines)


def format_classification_report(metrics: dict[str, Any], label_names: Sequence[str]) -> str:
    """Per-class precision / recall / F1 / support, then the macro averages and accuracy."""
    first = max(len("macro avg"), *(len(name) for name in label_names))
    header = f"{'':{first}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"
    lines = [header]
    for c, name in enumerate(label_names):
        p, r, f = metrics["precision"][c], metrics["recall"][c], metrics["f1"][c]
        lines.append(f"{name:{first}} {p:9.4f} {r:9.4f} {f:9.4f} {metrics['support'][c]:9d}")
    p, r, f = metrics["macro_precision"], metrics["macro_recall"], metrics["macro_f1"]
    lines.append(f"{'macro avg':{first}} {p:9.4f} {r:9.4f} {f:9.4f} {metrics['n']:9d}")
    lines.append(f"{'accuracy':{first}} {'':9} {'':9} {metrics['accuracy']:9.4f} {metrics['n']:9d}")
    return "\n".join(lines)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, batches: Iterable[Batch]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A classifier's logits (N, K) as float32 on the CPU, in batch order, and the labels (N,)
    the batches carry (None when they carry none)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in batches:
        moved = batch.to(device)
        logits.append(model(moved.inputs, moved.token_types, moved.attention_mask).float().cpu())
        if batch.labels is not None:
            labels.append(batch.labels)
    model.train(was_training)
    if not logits:
        raise ValueError("no batches to predict")
    all_labels = torch.cat(labels) if labels and len(labels) == len(logits) else None
    return torch.cat(logits), all_labels
