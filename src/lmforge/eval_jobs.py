"""What `lmforge evaluate --text` and `--classify` do: score a run on a file the user gives."""

import logging
from pathlib import Path
from typing import Any

from lmforge import checkpoint as ckpt
from lmforge.compress.runs import read_text
from lmforge.data.classify import classification_batches, encode_examples, read_examples
from lmforge.errors import ConfigError, LMForgeError
from lmforge.evaluate import (
    TextScore,
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
    predict_logits,
    score_text,
)
from lmforge.generate import require_causal_lm
from lmforge.plots import plot_confusion_matrix, plot_position_loss
from lmforge.predict import load_classifier

log = logging.getLogger(__name__)


def evaluate_text(
    run_dir: Path, text_file: Path, stride: int | None = None, plot: Path | None = None
) -> tuple[TextScore, Path | None]:
    """Loss, perplexity and bits per byte of a causal LM on a UTF-8 text (sliding windows).

    The text is scored as one document after <|endoftext|>, so every one of its tokens counts;
    the loss-by-position curve goes to `plot` when given.
    """
    cfg, model, tokenizer = ckpt.load_run(run_dir)
    require_causal_lm(model)
    text = read_text(text_file)
    window = cfg.model.block_size
    if stride is not None and not 1 <= stride <= window:
        raise ConfigError(f"--stride must be between 1 and the context ({window}); got {stride}")
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    score = score_text(model, ids, len(text.encode("utf-8")), window, stride)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_position_loss(score.position_loss, plot)
    return score, plot


def evaluate_classifier(
    run_dir: Path,
    data_file: Path,
    batch_size: int = 32,
    plot: Path | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Accuracy, macro P/R/F1 and the confusion matrix of a fine-tuned classifier (or of the
    head `task` of a multitask run) on a labelled file with the columns it was tuned on."""
    if batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    cfg, model, tokenizer, labels = load_classifier(run_dir, task)
    ft = cfg.finetune
    examples = read_examples(
        data_file, ft.text_column, ft.label_column, ft.text_pair_column or None, "test"
    )
    enc = encode_examples(examples, tokenizer, cfg.model.arch, cfg.model.block_size, labels, "test")
    if note := enc.truncation_note():
        log.warning("warning: %s (model.block_size)", note)
    logits, targets = predict_logits(model, classification_batches(enc, batch_size))
    metrics = classification_metrics(logits.argmax(1), targets, len(labels))
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion_matrix(metrics["confusion_matrix"], labels, plot)
    return {
        "metrics": metrics,
        "labels": labels,
        "truncated": enc.truncated,
        "confusion_table": format_confusion_matrix(metrics["confusion_matrix"], labels),
        "report": format_classification_report(metrics, labels),
    }
