"""Using a fine-tuned classifier: load it (adapters included) and predict labels for a file."""

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig
from lmforge.data.classify import (
    LABELS_FILE,
    Example,
    classification_batches,
    encode_examples,
    load_label_map,
    read_examples,
)
from lmforge.errors import CheckpointError, LMForgeError
from lmforge.evaluate import classification_metrics, predict_logits
from lmforge.files import write_text_atomic
from lmforge.finetune import with_adapters
from lmforge.model.heads import MultiTaskClassifier, SequenceClassifier, TaskHead
from lmforge.model.lora import add_lora
from lmforge.multitask import TASK_COLUMNS, TASKS_FILE
from lmforge.tokenizer import Tokenizer
from lmforge.train.runtime import choose_device

log = logging.getLogger(__name__)


def load_classifier(
    run_dir: Path, task: str | None = None
) -> tuple[RunConfig, nn.Module, Tokenizer, list[str]]:
    """(config, classifier in eval mode, tokenizer, label names) of a fine-tuned run; for a
    `finetune multitask` run, of its head `task` (the config then names that task's columns)."""
    if (run_dir / TASKS_FILE).is_file():
        return _load_task_head(run_dir, task)
    if task is not None:
        raise LMForgeError(
            f"--task is for runs made by `lmforge finetune multitask`; {run_dir} has one head"
        )
    cfg = ckpt.read_run_config(run_dir)
    if cfg.train.objective != "classify":
        raise CheckpointError(
            f"{run_dir} is not a classifier (train.objective={cfg.train.objective}); predict "
            "with a run made by `lmforge finetune classify`"
        )
    tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER_FILE)
    ckpt.check_vocab(tokenizer, cfg, str(run_dir))
    labels = load_label_map(run_dir / LABELS_FILE)
    body = ckpt.build_model(cfg)
    if cfg.lora.r:  # the run holds adapters and the head; the body comes from the base run
        ckpt.load_base_weights(body, Path(cfg.finetune.base))
    model = with_adapters(cfg, SequenceClassifier(body, len(labels), cfg.finetune.dropout))
    ckpt.load_weights(model, run_dir / ckpt.MODEL_FILE)
    return cfg, model.eval(), tokenizer, labels


def _load_task_head(
    run_dir: Path, task: str | None
) -> tuple[RunConfig, nn.Module, Tokenizer, list[str]]:
    """One head of a multitask run, with that task's labels and default columns."""
    cfg = ckpt.read_run_config(run_dir)
    try:
        tasks = json.loads((run_dir / TASKS_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{run_dir}/{TASKS_FILE} is unreadable ({exc})") from None
    if task not in tasks:
        problem = "is a multitask run: choose a head with --task NAME"
        if task is not None:
            problem = f"has no task {task!r}"
        raise LMForgeError(f"{run_dir} {problem}; its tasks are {', '.join(sorted(tasks))}")
    tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER_FILE)
    ckpt.check_vocab(tokenizer, cfg, str(run_dir))
    body = ckpt.build_model(cfg)
    if cfg.lora.r:
        ckpt.load_base_weights(body, Path(cfg.finetune.base))
    classes = {name: len(record["labels"]) for name, record in tasks.items()}
    model = MultiTaskClassifier(body, classes, cfg.finetune.dropout)
    if cfg.lora.r:
        add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, 0.0, ("heads*",))
    ckpt.load_weights(model, run_dir / ckpt.MODEL_FILE)
    columns = {k: tasks[task][k] for k in TASK_COLUMNS if k in tasks[task]}
    cfg = replace(cfg, finetune=replace(cfg.finetune, **columns))
    return cfg, TaskHead(model, task).eval(), tokenizer, list(tasks[task]["labels"])


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
