"""`lmforge finetune classify | multitask`: a pretrained BERT (pooled [CLS] or mean) or GPT (last
real token) under new classifier layers, trained by epochs through the one session.

- classify: one classifier layer on labelled text; evaluated every epoch (and after
  finetune.max_steps, when that comes first), the best epoch's weights kept. Optionally the base
  adapts to the task text first (finetune.pretrain_steps) or is trained from scratch
  (--from-scratch CONFIG), and finetune.soup N averages N classifiers (lmforge.jobs.soup).
- multitask: one shared body and a classifier layer per task; each step trains one task.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.data.classify import (
    TASK_COLUMNS,
    ClassificationData,
    Task,
    balanced_class_weights,
    load_data,
    load_task,
    read_examples,
    read_task_spec,
    save_label_map,
)
from lmforge.data.sources import (
    batches_per_task,
    classification_sources,
    multitask_sources,
)
from lmforge.errors import ConfigError
from lmforge.evaluate import (
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
)
from lmforge.jobs import soup
from lmforge.jobs.domain_adapt import adapted_base, with_adapted_base
from lmforge.jobs.finetune_start import (
    base_model,
    base_tokenizer,
    keep_best_weights,
    log_trainable,
    start_run,
)
from lmforge.jobs.from_scratch import scratch_base, start_from_scratch, stopped_while_preparing
from lmforge.jobs.run_control import main_rank_lock
from lmforge.jobs.session import TrainingPlan, train
from lmforge.plots import plot_confusion_matrix
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.load import classifier_model, multitask_model
from lmforge.train.distributed import launched_world_size
from lmforge.train.evaluators import ClassifierEval, MultiTaskEval
from lmforge.train.objectives import classification_loss, multitask_loss

log = logging.getLogger(__name__)


def epoch_schedule(cfg: RunConfig, max_steps: int, per_epoch: int, valid_batches: int) -> RunConfig:
    """cfg with max_steps (at most finetune.max_steps when that is set), a warmup of
    finetune.warmup_fraction of them, and an eval and a save every epoch over all valid_batches
    (and after the last step)."""
    if cfg.finetune.max_steps:
        max_steps = min(max_steps, cfg.finetune.max_steps)
    per_epoch = min(per_epoch, max_steps)
    train = replace(
        cfg.train,
        max_steps=max_steps,
        warmup_steps=round(cfg.finetune.warmup_fraction * max_steps),
        eval_interval=per_epoch,
        checkpoint_interval=per_epoch,
        eval_batches=valid_batches,
    )
    return replace(cfg, train=train)


def _epochs(cfg: RunConfig, n_train: int, n_valid: int, epochs: float) -> tuple[RunConfig, float]:
    """Steps from epochs over the global batch (micro batch x processes): the config with its
    schedule, and the optimizer steps per epoch."""
    rows = cfg.train.batch_size * launched_world_size()
    per_epoch = max(1, n_train // rows)  # micro-batches per epoch
    max_steps = max(1, -(-round(epochs * per_epoch) // cfg.train.grad_accum))
    steps_per_epoch = min(max_steps, -(-per_epoch // cfg.train.grad_accum))
    valid_batches = -(-n_valid // rows)
    return epoch_schedule(cfg, max_steps, steps_per_epoch, valid_batches), per_epoch / max(
        cfg.train.grad_accum, 1
    )


def finetune_classify(
    cfg: RunConfig, out: Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Fine-tune cfg.finetune.base as a sequence classifier into run directory `out`."""
    with main_rank_lock(out, "lmforge finetune classify"):
        return run_classify(cfg, out, overwrite, resume)


def finetune_classify_from_scratch(
    config: Path,
    flags: Mapping[str, Any],
    sets: list[str],
    out: Path,
    overwrite: bool = False,
    path: Path | None = None,
) -> dict[str, Any]:
    """`finetune classify --from-scratch CONFIG`: a tokenizer and a base of CONFIG trained on the
    training texts first, then the classifier (see lmforge.jobs.from_scratch)."""
    with main_rank_lock(out, "lmforge finetune classify"):
        again = not overwrite and stopped_while_preparing(out)
        if again:
            log.warning("notice: %s was stopped while its texts were prepared; starting over", out)
        start_run(out, overwrite or again, resume=False)
        cfg, tokenizer = start_from_scratch(config, flags, sets, out, path)
        data = load_data(cfg, tokenizer)
        cfg, _ = _epochs(cfg, len(data.train), len(data.valid), cfg.finetune.epochs)
        ckpt.write_run_files(out, cfg, tokenizer)  # from here on, --resume RUN finds the run
        return run_classify(cfg, out, False, True, data)


def run_classify(
    cfg: RunConfig,
    out: Path,
    overwrite: bool,
    resume: bool,
    data: ClassificationData | None = None,
) -> dict[str, Any]:
    """The classify run, inside the caller's run lock; data: the splits already encoded with
    the base's tokenizer, if any."""
    soup.check_soup(cfg, launched_world_size())
    if cfg.finetune.from_scratch:
        scratch_base(out)
    tokenizer = base_tokenizer(cfg)
    data = data or load_data(cfg, tokenizer)
    if not resume:
        cfg, _ = _epochs(cfg, len(data.train), len(data.valid), cfg.finetune.epochs)
    resume_from = _start_classify(cfg, out, overwrite, resume)
    build_cfg = cfg
    if cfg.finetune.pretrain_steps and not cfg.finetune.from_scratch:
        if not resume:  # --resume finds the run while its base is still adapting
            ckpt.write_run_files(out, cfg, tokenizer)
        examples = read_examples(
            cfg.finetune.train_file,
            cfg.finetune.text_column,
            pair_column=cfg.finetune.text_pair_column or None,
        )
        build_cfg = with_adapted_base(cfg, adapted_base(cfg, out, examples, tokenizer, base_model))
    weights = None
    if cfg.finetune.class_weights == "balanced":
        weights = balanced_class_weights(data.train.labels or [], len(data.labels))
    loss = partial(
        classification_loss, class_weights=weights, label_smoothing=cfg.finetune.label_smoothing
    )

    def plan(head_seed: int | None = None) -> TrainingPlan:
        """The classifier's training; head_seed: draw its head with this seed (soup members),
        else from the run's seeded generator."""
        return TrainingPlan(
            objective=(loss, ClassifierEval(data.labels)),
            sources=lambda world: classification_sources(world, data),
            tokenizer=tokenizer,
            build=lambda: log_trainable(seeded_classifier(build_cfg, data, head_seed)),
            run_files=lambda run_dir: save_label_map(data.labels, run_dir / layout.LABELS_FILE),
            resume_finished=True,  # killed before its best epoch was kept: keep it on --resume
        )

    def member(member_cfg: RunConfig, run_dir: Path, start: Path | None, seed: int) -> Any:
        result = train(member_cfg, run_dir, start, plan(seed))
        return run_dir / layout.MODEL_FILE, keep_best_weights(run_dir, result)

    if cfg.finetune.soup > 1 and (first := soup.finished(out, 0)) is not None:
        summary, best = first["summary"], first  # member 0 (this run) finished before
    else:
        summary = train(cfg, out, resume_from, plan())
        if not summary["is_main"]:
            return summary
        best = _keep_best(out, summary, data.labels)
        if cfg.finetune.soup > 1:
            soup.mark_finished(out, 0, out / layout.MODEL_FILE, best, summary)
    if cfg.finetune.soup > 1:
        best = soup.soup_of(cfg, out, data, soup.train_members(cfg, out, member), build_cfg)
        plot_confusion_matrix(
            best["val_confusion_matrix"], data.labels, out / layout.CONFUSION_PLOT
        )
    result = _classify_summary(cfg, out, data, summary, best)
    if cfg.finetune.soup > 1:
        result["soup"] = {
            "members": cfg.finetune.soup,
            "member_valid_accuracy": best["soup_member_accuracy"],
        }
    return result


def seeded_classifier(cfg: RunConfig, data: ClassificationData, head_seed: int | None) -> nn.Module:
    """The base under a new classifier head; with head_seed, drawn from that seed without
    touching the seeded generator the run's dropout continues from."""
    if head_seed is None:
        return classifier_model(cfg, len(data.labels), base_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        return classifier_model(cfg, len(data.labels), base_weights=True)


def _start_classify(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> Path | None:
    """As _start; a run resumed while (or right after) adapting its base has no classifier
    checkpoint yet, and its classifier starts afresh."""
    if resume and (cfg.finetune.pretrain_steps or cfg.finetune.from_scratch):
        checkpoints = ckpt.list_checkpoints(out)
        return checkpoints[-1] if checkpoints else None
    return start_run(out, overwrite, resume)


def _keep_best(run_dir: Path, summary: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The best epoch's weights as the run's model, its confusion matrix plotted."""
    best = keep_best_weights(run_dir, summary)
    plot_confusion_matrix(best["val_confusion_matrix"], labels, run_dir / layout.CONFUSION_PLOT)
    return best


def _metrics_from_confusion(matrix: list[list[int]], n_classes: int) -> dict[str, Any]:
    """Every classification metric (per class too) recomputed from a confusion matrix."""
    pairs = [(t, p) for t, row in enumerate(matrix) for p, count in enumerate(row)]
    counts = [matrix[t][p] for t, p in pairs]
    targets = torch.tensor([t for (t, _), c in zip(pairs, counts, strict=True) for _ in range(c)])
    preds = torch.tensor([p for (_, p), c in zip(pairs, counts, strict=True) for _ in range(c)])
    return classification_metrics(preds, targets, n_classes)


def _classify_summary(
    cfg: RunConfig,
    out: Path,
    data: ClassificationData,
    summary: dict[str, Any],
    best: dict[str, Any],
) -> dict[str, Any]:
    _, per_epoch = _epochs(cfg, len(data.train), len(data.valid), cfg.finetune.epochs)
    metrics = _metrics_from_confusion(best["val_confusion_matrix"], len(data.labels))
    return {
        **summary,
        "labels": data.labels,
        "train_examples": len(data.train),
        "valid_examples": len(data.valid),
        "truncated": {"train": data.train.truncated, "valid": data.valid.truncated},
        "epochs": round(summary["steps"] / per_epoch, 2),
        "best_epoch": round(best["step"] / per_epoch, 2),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float | int)},
        "confusion_matrix": format_confusion_matrix(metrics["confusion_matrix"], data.labels),
        "report": format_classification_report(metrics, data.labels),
        "confusion_plot": str(out / layout.CONFUSION_PLOT),
    }


# ---------------------------------------------------------------- multitask


def finetune_multitask(
    cfg: RunConfig,
    task_files: dict[str, Path],
    out: Path,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune the base run on several classification tasks at once into run `out`."""
    if len(task_files) < 2:
        raise ConfigError("multitask needs at least two --task NAME=FILE")
    specs = {name: read_task_spec(name, path) for name, path in task_files.items()}
    with main_rank_lock(out, "lmforge finetune multitask"):
        return run_multitask(cfg, specs, out, overwrite, resume)


def run_multitask(
    cfg: RunConfig, specs: dict[str, dict[str, str]], out: Path, overwrite: bool, resume: bool
) -> dict[str, Any]:
    """The multitask run over the tasks' specs (read_task_spec), inside the caller's run lock."""
    resume_from = start_run(out, overwrite, resume)
    tokenizer = base_tokenizer(cfg)
    tasks = [load_task(name, spec, cfg, tokenizer) for name, spec in specs.items()]
    if not resume:
        n_train = sum(len(t.train) for t in tasks)
        rows = cfg.train.batch_size * launched_world_size()
        valid = sum(-(-len(t.valid) // rows) for t in tasks)
        per_epoch = max(1, n_train // rows)
        max_steps = max(1, round(cfg.finetune.epochs * per_epoch))
        cfg = epoch_schedule(cfg, max_steps, per_epoch, valid)
    classes = {t.name: len(t.labels) for t in tasks}
    plan = TrainingPlan(
        objective=(
            partial(multitask_loss, label_smoothing=cfg.finetune.label_smoothing),
            MultiTaskEval({t.name: t.labels for t in tasks}),
        ),
        sources=lambda world: multitask_sources(world, tasks),
        tokenizer=tokenizer,
        build=lambda: log_trainable(multitask_model(cfg, classes, base_weights=True)),
        run_files=lambda run_dir: _write_tasks(run_dir, tasks, specs),
        unused_parameters=True,  # a step trains one task's head; the others get no gradient
        resume_finished=True,
    )
    summary = train(cfg, out, resume_from, plan)
    if not summary["is_main"]:
        return summary
    best = keep_best_weights(out, summary)
    drawn = batches_per_task(cfg, tasks, summary["steps"])
    return {**summary, "best": best, "tasks": list(specs), "batches_per_task": drawn}


def _write_tasks(run_dir: Path, tasks: list[Task], specs: dict[str, dict[str, str]]) -> None:
    """tasks.json: what predict/evaluate --task need (labels, default columns) and what
    --resume needs (the files)."""
    record = {
        t.name: {
            "labels": t.labels,
            "train": len(t.train),
            "valid": len(t.valid),
            **{key: specs[t.name][key] for key in (*TASK_COLUMNS, "train_file", "valid_file")},
        }
        for t in tasks
    }
    write_text_atomic(run_dir / layout.TASKS_FILE, json.dumps(record, indent=2))
