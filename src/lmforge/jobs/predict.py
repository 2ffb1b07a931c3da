"""Using a fine-tuned classifier: load it (adapters included) and predict labels for a file."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.classify import (
    Example,
    classification_batches,
    encode_examples,
    read_examples,
)
from lmforge.errors import LMForgeError
from lmforge.evaluate import classification_metrics, predict_logits
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.load import load_classifier
from lmforge.train.runtime import choose_device

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class PredictOptions:
    run: Path
    input: Path
    output: Path
    text_column: str | None = None  # None: the column the run was fine-tuned on
    text_pair_column: str | None = None
    label_column: str | None = None  # when given, also report accuracy against it
    batch_size: int = 32
    overwrite: bool = False
    task: str | None = None  # the head of a multitask run


def predict(opts: PredictOptions) -> dict[str, Any]:
    """Classify every row of opts.input; write JSONL (text, label, probabilities) atomically."""
    if opts.batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    if opts.output.exists() and not opts.overwrite:
        raise LMForgeError(f"{opts.output} exists; choose another --output or pass --overwrite")
    cfg, model, tokenizer, labels = load_classifier(opts.run, opts.task)
    pair = opts.text_pair_column or cfg.finetune.text_pair_column or None
    examples = read_examples(
        opts.input, opts.text_column or cfg.finetune.text_column, opts.label_column, pair, "input"
    )
    known = labels if opts.label_column else None
    enc = encode_examples(examples, tokenizer, cfg.model.arch, cfg.model.block_size, known, "input")
    if note := enc.truncation_note():
        log.warning("warning: %s (model.block_size)", note)
    model.to(choose_device(cfg.train.device))
    logits, targets = predict_logits(model, classification_batches(enc, opts.batch_size))
    probs = logits.softmax(-1)
    lines = [_prediction(e, p, labels) for e, p in zip(examples, probs.tolist(), strict=True)]
    write_text_atomic(opts.output, "".join(lines))
    summary: dict[str, Any] = {"output": str(opts.output), "n": len(examples)}
    summary["truncated"] = enc.truncated
    if targets is not None:
        metrics = classification_metrics(probs.argmax(1), targets, len(labels))
        summary.update(accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"])
    return summary


def _prediction(example: Example, probs: list[float], labels: list[str]) -> str:
    record: dict[str, Any] = {"text": example.text}
    if example.pair is not None:
        record["text_pair"] = example.pair
    best = max(range(len(labels)), key=probs.__getitem__)
    record["label"] = labels[best]
    record["probabilities"] = {name: round(p, 6) for name, p in zip(labels, probs, strict=True)}
    return json.dumps(record, ensure_ascii=False) + "\n"
