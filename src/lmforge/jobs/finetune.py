"""`lmforge finetune classify | multitask | lm | sft`: a run's model trained further, through
the one session (so every fine-tune checkpoints, resumes and runs under torchrun).

- classify: a pretrained BERT (pooled [CLS]) or GPT (last real token) under a new classifier
  layer, on labelled text; evaluated every epoch, the best epoch's weights kept.
- multitask: one shared body and a classifier layer per task; each step trains one task.
- lm: continued pretraining of a GPT on text prepared with its tokenizer.
- sft: a GPT learns prompt -> completion pairs (loss on the completion only), then is scored by
  generation (exact match, BLEU, chrF).

With lora.r > 0 only low-rank adapters (and new heads) train; an lm/sft run is then an adapter
run (adapter.safetensors + adapter_config.json) that load_run uses over its base.
"""

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.config.load import finetune_config, resume_config
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
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
from lmforge.data.sft import encode_pairs, read_pairs
from lmforge.data.sources import (
    batches_per_task,
    classification_sources,
    multitask_sources,
    open_data,
    sft_sources,
)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.evaluate import (
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
)
from lmforge.jobs import soup
from lmforge.jobs.domain_adapt import adapted_base, with_adapted_base
from lmforge.jobs.evaluate import score_generation
from lmforge.jobs.from_scratch import scratch_base, start_from_scratch
from lmforge.jobs.run_control import check_new_run_dir, main_rank_lock, newest_checkpoint
from lmforge.jobs.session import TrainingPlan, train
from lmforge.model.lora import add_lora, lora_layers, trainable_share
from lmforge.plots import plot_confusion_matrix
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.adapters import adapter_record, is_adapter_run, write_adapter_config
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.load import (
    build_model,
    check_vocab,
    classifier_model,
    load_base_weights,
    multitask_model,
    read_chat_template,
    read_run_config,
    read_tasks,
    write_chat_template,
)
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import launched_rank, launched_world_size
from lmforge.train.evaluators import ClassifierEval, MultiTaskEval
from lmforge.train.objectives import classification_loss, multitask_loss, sft_loss

log = logging.getLogger(__name__)


def resolve(
    task: str, base: Path, path: Path | None, sets: list[str], flags: Mapping[str, Any]
) -> RunConfig:
    """The resolved config of fine-tune `task` of run `base` (see config.load.finetune_config)."""
    return finetune_config(read_run_config(base), base, task, path, sets, flags)


def _start(out: Path, overwrite: bool, resume: bool) -> Path | None:
    """The checkpoint to continue from (resume), or a fresh run directory (checked; cleared
    with overwrite by the main process only)."""
    if resume:
        return newest_checkpoint(out)
    if launched_rank() == 0:
        check_new_run_dir(out, overwrite)
        if out.exists() and overwrite:
            shutil.rmtree(out)
    return None


def _log_trainable(model: nn.Module) -> nn.Module:
    trainable, total = trainable_share(model)
    log.info(
        "trainable parameters: %s of %s (%.2f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def _base_tokenizer(cfg: RunConfig) -> Tokenizer:
    tokenizer = Tokenizer.load(Path(cfg.finetune.base) / layout.TOKENIZER_FILE)
    check_vocab(tokenizer, cfg, cfg.finetune.base)
    return tokenizer


# ---------------------------------------------------------------- classify


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
        return _classify(cfg, out, overwrite, resume)


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
        _start(out, overwrite, resume=False)
        cfg, tokenizer = start_from_scratch(config, flags, sets, out, path)
        data = load_data(cfg, tokenizer)
        cfg, _ = _epochs(cfg, len(data.train), len(data.valid), cfg.finetune.epochs)
        ckpt.write_run_files(out, cfg, tokenizer)  # from here on, --resume RUN finds the run
        return _classify(cfg, out, False, True, data)


def _classify(
    cfg: RunConfig,
    out: Path,
    overwrite: bool,
    resume: bool,
    data: ClassificationData | None = None,
) -> dict[str, Any]:
    """The classify run; data: the splits already encoded with the base's tokenizer, if any."""
    soup.check_soup(cfg, launched_world_size())
    if cfg.finetune.from_scratch:
        scratch_base(out)
    tokenizer = _base_tokenizer(cfg)
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
            build=lambda: _log_trainable(seeded_classifier(build_cfg, data, head_seed)),
            run_files=lambda run_dir: save_label_map(data.labels, run_dir / layout.LABELS_FILE),
        )

    def member(member_cfg: RunConfig, run_dir: Path, start: Path | None, seed: int) -> Any:
        result = train(member_cfg, run_dir, start, plan(seed))
        return run_dir / layout.MODEL_FILE, _keep_best_weights(run_dir, result)

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
    return _start(out, overwrite, resume)


def _keep_best(run_dir: Path, summary: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The best epoch's weights as the run's model, its confusion matrix plotted."""
    best = _keep_best_weights(run_dir, summary)
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
        return _multitask(cfg, specs, out, overwrite, resume)


def _multitask(
    cfg: RunConfig, specs: dict[str, dict[str, str]], out: Path, overwrite: bool, resume: bool
) -> dict[str, Any]:
    resume_from = _start(out, overwrite, resume)
    tokenizer = _base_tokenizer(cfg)
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
        build=lambda: _log_trainable(multitask_model(cfg, classes, base_weights=True)),
        run_files=lambda run_dir: _write_tasks(run_dir, tasks, specs),
        unused_parameters=True,  # a step trains one task's head; the others get no gradient
    )
    summary = train(cfg, out, resume_from, plan)
    if not summary["is_main"]:
        return summary
    best = _keep_best_weights(out, summary)
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


def _weights_in(directory: Path) -> Path | None:
    """The weights file a checkpoint mirror holds: adapters (LoRA runs) or the whole model."""
    for name in (layout.ADAPTER_FILE, layout.MODEL_FILE):
        if (directory / name).is_file():
            return directory / name
    return None


def _keep_best_weights(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Make the best evaluation's weights the run's model.safetensors (the newest ones when no
    evaluation beat the untrained heads at step 0); that evaluation's record. A classifier run
    keeps one weights file, as predict and evaluate --classify read it."""
    best, weights = summary["best_metrics"], _weights_in(run_dir / layout.BEST_DIR)
    if summary["best_step"] == 0 or weights is None:
        log.warning("warning: no epoch improved %s; kept the last weights", summary["best_metric"])
        best, weights = summary["last_metrics"], _weights_in(run_dir)
    if weights is None:
        raise CheckpointError(f"{run_dir} holds no weights; resume it or start it again")
    tmp = run_dir / f".{layout.MODEL_FILE}.tmp"
    shutil.copyfile(weights, tmp)
    tmp.replace(run_dir / layout.MODEL_FILE)
    (run_dir / layout.ADAPTER_FILE).unlink(missing_ok=True)
    return best


# ---------------------------------------------------------------- lm and sft


def freeze(model: nn.Module, layers: int, embeddings: bool) -> None:
    """No gradients for the embeddings and/or the first `layers` blocks."""
    if layers > len(model.blocks):
        raise ConfigError(f"--freeze-layers {layers} but the model has {len(model.blocks)} blocks")
    for block in list(model.blocks)[:layers]:
        block.requires_grad_(False)
    if embeddings:
        model.tok_emb.requires_grad_(False)
        if model.pos_emb is not None:
            model.pos_emb.requires_grad_(False)


def base_model(cfg: RunConfig) -> Callable[[], nn.Module]:
    """Builds the base run's model, frozen as finetune.* says, with LoRA adapters if lora.r."""

    def build() -> nn.Module:
        model = build_model(cfg)
        load_base_weights(model, Path(cfg.finetune.base))
        freeze(model, cfg.finetune.freeze_layers, cfg.finetune.freeze_embeddings)
        if cfg.lora.r:
            add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
        return _log_trainable(model)

    return build


def _write_adapter_config(cfg: RunConfig, out: Path) -> None:
    """adapter_config.json of an adapter run, from a model wrapped the same way."""
    model = build_model(cfg)
    add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    settings = {
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "dropout": cfg.lora.dropout,
        "layers": sorted(lora_layers(model)),
        "heads": [],
    }
    write_adapter_config(out, adapter_record(Path(cfg.finetune.base), settings))


def _check_lora_base(cfg: RunConfig) -> None:
    if cfg.lora.r and is_adapter_run(Path(cfg.finetune.base)):
        raise CheckpointError(
            f"{cfg.finetune.base} is itself a LoRA adapter run: new adapters need a full base; "
            f"merge it first (`lmforge lora merge {cfg.finetune.base} --out DIR`) or fine-tune "
            "without --lora-r"
        )


def _lm_run(
    cfg: RunConfig, out: Path, overwrite: bool, resume: bool, plan: TrainingPlan
) -> dict[str, Any]:
    _check_lora_base(cfg)
    resume_from = _start(out, overwrite, resume)
    extra = plan.run_files

    def run_files(run_dir: Path) -> None:
        if cfg.lora.r:  # load_run then treats the run as base + adapters
            _write_adapter_config(cfg, run_dir)
        if extra is not None:
            extra(run_dir)

    summary = train(cfg, out, resume_from, replace(plan, run_files=run_files))
    return {**summary, "lora_r": cfg.lora.r}


def finetune_lm(
    cfg: RunConfig, out: Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Continued pretraining of the base run on cfg.data.dir (prepared with its tokenizer)."""
    with main_rank_lock(out, "lmforge finetune lm"):
        return _lm(cfg, out, overwrite, resume)


def _lm(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> dict[str, Any]:
    if not cfg.data.dir:
        raise ConfigError(
            "finetune lm needs --data DIR (made by `lmforge prepare` with the base "
            "run's tokenizer: --tokenizer-file BASE/tokenizer.json)"
        )
    base_tokenizer = Tokenizer.load(Path(cfg.finetune.base) / layout.TOKENIZER_FILE)
    _, data_tokenizer = open_data(cfg)
    if data_tokenizer.sha256() != base_tokenizer.sha256():
        raise DataError(
            f"{cfg.data.dir} was prepared with another tokenizer than {cfg.finetune.base}; "
            f"prepare it with --tokenizer-file {Path(cfg.finetune.base) / layout.TOKENIZER_FILE}"
        )
    return _lm_run(cfg, out, overwrite, resume, TrainingPlan(build=base_model(cfg)))


def finetune_sft(
    cfg: RunConfig, out: Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Teach the base run prompt -> completion pairs from JSONL; then score it by generation."""
    with main_rank_lock(out, "lmforge finetune sft"):
        return _sft(cfg, out, overwrite, resume)


def _sft(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> dict[str, Any]:
    ft = cfg.finetune
    if not ft.train_file or not ft.valid_file:
        raise ConfigError("finetune sft needs --train FILE and --valid FILE (JSONL)")
    tokenizer = Tokenizer.load(Path(ft.base) / layout.TOKENIZER_FILE)
    template = chat_template_of(Path(ft.base), tokenizer)
    block = cfg.model.block_size
    train_pairs = read_pairs(Path(ft.train_file), ft.skip_bad_lines, template)
    train_set = encode_pairs(train_pairs, tokenizer, block)
    valid_pairs = read_pairs(Path(ft.valid_file), ft.skip_bad_lines, template)
    valid = encode_pairs(valid_pairs, tokenizer, block)
    plan = TrainingPlan(
        objective=(partial(sft_loss, label_smoothing=ft.label_smoothing), None),
        sources=lambda world: sft_sources(world, train_set, valid, tokenizer.eot_id),
        tokenizer=tokenizer,
        build=base_model(cfg),
        run_files=lambda run_dir: write_chat_template(run_dir, template),
    )
    summary = _lm_run(cfg, out, overwrite, resume, plan)
    if not summary["is_main"]:
        return summary
    return {**summary, "generation": score_generation(out, valid_pairs)}


def chat_template_of(run_dir: Path, tokenizer: Tokenizer) -> ChatTemplate:
    """A run's chat template; lmforge's own (data/chat.py) for a run that has none."""
    template = read_chat_template(run_dir, tokenizer)
    return template or ChatTemplate(DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or "")


# ---------------------------------------------------------------- --resume


def finetune_kind(run_dir: Path, cfg: RunConfig) -> str:
    """Which fine-tune made a run: classify, multitask, lm or sft."""
    if not cfg.finetune.base:
        raise CheckpointError(
            f"{run_dir} is not a fine-tuned run; continue it with `lmforge pretrain --resume`"
        )
    if cfg.train.objective == "classify":
        return "multitask" if (run_dir / layout.TASKS_FILE).is_file() else "classify"
    return "sft" if cfg.finetune.train_file else "lm"


def resume_finetune(run_dir: Path, sets: list[str], task: str | None = None) -> dict[str, Any]:
    """Continue a fine-tune from its newest checkpoint with its own config (plus --set); one
    stopped before its first checkpoint starts over."""
    with main_rank_lock(run_dir, "lmforge finetune --resume"):
        return _resume(run_dir, sets, task)


def _resume(run_dir: Path, sets: list[str], task: str | None) -> dict[str, Any]:
    cfg = resume_config(read_run_config(run_dir), sets)
    kind = finetune_kind(run_dir, cfg)
    if task is not None and task != kind:
        raise ConfigError(f"{run_dir} was made by `finetune {kind}`; resume it with that verb")
    if kind == "multitask":
        tasks = read_tasks(run_dir)
        specs = {
            name: {k: record[k] for k in (*TASK_COLUMNS, "train_file", "valid_file")}
            for name, record in tasks.items()
        }
        return _multitask(cfg, specs, run_dir, False, True)
    run = {"classify": _classify, "lm": _lm, "sft": _sft}[kind]
    return run(cfg, run_dir, False, True)
