"""Multi-task fine-tuning: one shared body, a classifier head per task (`finetune multitask`).

Each step trains one task, drawn with probability p_i ∝ n_i^(1/T) (n_i its training examples,
T = finetune.task_temperature: 1 is proportional to size, larger evens the tasks out). Every
evaluation scores each task (val_<task>_accuracy, val_<task>_macro_f1, ...) and their means
(val_accuracy, val_macro_f1, ...), which train.best_metric and train.patience act on.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, read_config_file
from lmforge.data.batches import Batch, step_generator
from lmforge.data.classify import (
    EncodedExamples,
    build_label_map,
    classification_batches,
    encode_examples,
    pad_batch,
    read_examples,
)
from lmforge.errors import ConfigError
from lmforge.evaluate import classification_metrics
from lmforge.files import check_output_dir, staged_directory, write_text_atomic
from lmforge.finetune import epoch_schedule, load_finetune_config
from lmforge.model.heads import MultiTaskClassifier
from lmforge.model.lora import add_lora
from lmforge.tokenizer import Tokenizer
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import choose_device, seed_everything
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)
TASKS_FILE = "tasks.json"
TASK_COLUMNS = ("text_column", "text_pair_column", "label_column")
TASK_KEYS = ("train_file", "valid_file", *TASK_COLUMNS)
SCORES = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    labels: list[str]
    train: EncodedExamples
    valid: EncodedExamples


def read_task_spec(name: str, path: Path) -> dict[str, str]:
    """A task's files and columns from its YAML/JSON/TOML file (finetune.* names)."""
    spec = read_config_file(path)
    unknown = sorted(set(spec) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"task {name} ({path}): unknown key {unknown[0]!r}; use {TASK_KEYS}")
    if "train_file" not in spec or "valid_file" not in spec:
        raise ConfigError(f"task {name} ({path}) needs train_file and valid_file")
    base = path.parent  # relative paths are relative to the task file
    for key in ("train_file", "valid_file"):
        spec[key] = str(base / spec[key]) if not Path(spec[key]).is_absolute() else spec[key]
    return {"text_column": "sentence", "label_column": "label", "text_pair_column": "", **spec}


def load_task(name: str, spec: dict[str, str], cfg: RunConfig, tokenizer: Tokenizer) -> Task:
    pair = spec["text_pair_column"] or None
    examples = {
        split: read_examples(
            spec[f"{split}_file"], spec["text_column"], spec["label_column"], pair, split
        )
        for split in ("train", "valid")
    }
    labels = build_label_map(examples["train"])
    encode = lambda split: encode_examples(  # noqa: E731
        examples[split], tokenizer, cfg.model.arch, cfg.model.block_size, labels, split
    )
    return Task(name, labels, encode("train"), encode("valid"))


def task_probabilities(sizes: list[int], temperature: float) -> torch.Tensor:
    """p_i ∝ n_i^(1/T)."""
    weights = torch.tensor(sizes, dtype=torch.float64) ** (1.0 / temperature)
    return weights / weights.sum()


def task_sampler(
    tasks: list[Task], batch_size: int, seed: int, temperature: float
) -> Callable[[int, int], Batch]:
    """(step, micro) -> a batch of one task, both drawn from a generator seeded by the step."""
    probs = task_probabilities([len(t.train) for t in tasks], temperature)

    def batch(step: int, micro: int) -> Batch:
        generator = step_generator(seed, 11, step, micro)
        task = tasks[int(torch.multinomial(probs, 1, generator=generator))]
        size = min(batch_size, len(task.train))
        rows = torch.randperm(len(task.train), generator=generator)[:size].tolist()
        return replace(pad_batch(task.train, rows), task=task.name)

    return batch


def multitask_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    logits = model(batch.inputs, batch.token_types, batch.attention_mask, batch.task).float()
    return F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing)


class MultiTaskEval:
    """Per-task scores and their means; the last record is kept for the summary."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.last: dict[str, Any] = {}

    @torch.inference_mode()
    def __call__(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        logits: dict[str, list[torch.Tensor]] = {name: [] for name in self.tasks}
        labels: dict[str, list[torch.Tensor]] = {name: [] for name in self.tasks}
        for batch in batches:
            moved = batch.to(device)
            out = model(moved.inputs, moved.token_types, moved.attention_mask, batch.task)
            logits[batch.task].append(out.float().cpu())
            labels[batch.task].append(batch.labels)
        model.train(was_training)
        record: dict[str, Any] = {}
        losses = []
        for name, task in self.tasks.items():
            task_logits, task_labels = torch.cat(logits[name]), torch.cat(labels[name])
            metrics = classification_metrics(task_logits.argmax(1), task_labels, len(task.labels))
            losses.append(F.cross_entropy(task_logits, task_labels).item())
            record |= {f"val_{name}_{key}": metrics[key] for key in SCORES}
        n = len(self.tasks)
        record["val_loss"] = sum(losses) / n
        for key in SCORES:
            record[f"val_{key}"] = sum(record[f"val_{t}_{key}"] for t in self.tasks) / n
        self.last = record
        return record


def multitask_config(base: Path, path: Path | None, sets: list[str]) -> RunConfig:
    base_cfg = ckpt.read_run_config(base)
    return load_finetune_config(base_cfg.model, path, sets, {"base": str(base)})


def finetune_multitask(
    cfg: RunConfig, task_files: dict[str, Path], out: Path, overwrite: bool = False
) -> dict[str, Any]:
    """Fine-tune the base run on several classification tasks at once into run `out`."""
    if len(task_files) < 2:
        raise ConfigError("multitask needs at least two --task NAME=FILE")
    check_output_dir(out, overwrite)
    base = Path(cfg.finetune.base)
    tokenizer = Tokenizer.load(base / ckpt.TOKENIZER_FILE)
    ckpt.check_vocab(tokenizer, cfg, str(base))
    specs = {name: read_task_spec(name, path) for name, path in task_files.items()}
    tasks = [load_task(name, spec, cfg, tokenizer) for name, spec in specs.items()]
    body = ckpt.build_model(cfg)
    ckpt.load_base_weights(body, base)
    model = MultiTaskClassifier(body, {t.name: len(t.labels) for t in tasks}, cfg.finetune.dropout)
    if cfg.lora.r:
        add_lora(
            model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, ("heads*",)
        )
    seed_everything(cfg.train.seed)
    model.to(choose_device(cfg.train.device))
    size = cfg.train.batch_size
    valid = [replace(b, task=t.name) for t in tasks for b in classification_batches(t.valid, size)]
    per_epoch = max(1, sum(len(t.train) for t in tasks) // size)
    max_steps = max(1, round(cfg.finetune.epochs * per_epoch))
    cfg = epoch_schedule(cfg, max_steps, per_epoch, len(valid))
    evaluator = MultiTaskEval(tasks)
    with staged_directory(out, overwrite) as run_dir:
        ckpt.write_run_files(run_dir, cfg, tokenizer)
        record = {  # what predict/evaluate --task need: labels and default columns
            t.name: {
                "labels": t.labels,
                "train": len(t.train),
                "valid": len(t.valid),
                **{key: specs[t.name][key] for key in TASK_COLUMNS},
            }
            for t in tasks
        }
        write_text_atomic(run_dir / TASKS_FILE, json.dumps(record, indent=2))
        best: dict[str, Any] = {}

        def save(state: dict[str, Any], is_best: bool) -> None:
            if is_best or not best:
                ckpt.save_weights(model, run_dir / ckpt.MODEL_FILE, state["state"]["step"])
                best.clear()
                best.update(evaluator.last, step=state["state"]["step"])

        drawn = dict.fromkeys(specs, 0)  # training batches each task got
        sampler = task_sampler(tasks, size, cfg.train.seed, cfg.finetune.task_temperature)

        def counted(step: int, micro: int) -> Batch:
            batch = sampler(step, micro)
            drawn[batch.task] += 1
            return batch

        trainer = Trainer(
            model,
            build_optimizer(model, cfg.train),
            counted,
            cfg.train,
            partial(multitask_loss, label_smoothing=cfg.finetune.label_smoothing),
            lambda: valid,
            save=save,
            tracker=Tracker(run_dir, max_steps, 0, cfg.train.progress),
            metrics=evaluator,
        )
        try:
            state = trainer.fit()
        finally:
            trainer.tracker.close()
    return {
        "run_dir": str(out),
        "steps": state.step,
        "best": best,
        "tasks": list(task_files),
        "batches_per_task": drawn,
    }
