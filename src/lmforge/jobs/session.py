"""The one training session behind every run: pretraining, resuming, every fine-tune,
distillation and the recovery steps of pruning.

A session joins torchrun's process group (if launched by it), builds the model (seeded; from a
base run, with heads or LoRA, as the plan says), wraps it for DDP or shards it for FSDP, builds
the optimizer, draws each rank's rows of the global batch, runs the one Trainer, and writes
checkpoints/step_N (weights, trainer state, sharded optimizer state) that `--resume` continues
from exactly, at any number of processes.
"""

import logging
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from lmforge.config import RunConfig, to_dict
from lmforge.data.batches import Batch
from lmforge.data.sources import Sources, batch_sources, open_data
from lmforge.errors import ConfigError, Interrupted, LMForgeError
from lmforge.jobs.ngram_vocab import fit_ngram_vocabulary
from lmforge.jobs.run_control import StopSignals
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.load import build_model
from lmforge.tokenizer import Tokenizer
from lmforge.train import runtime
from lmforge.train.distributed import (
    DistContext,
    barrier,
    broadcast_choice,
    fill_shards,
    full_weights,
    init_distributed,
    rank_rows,
    shard,
    shutdown,
)
from lmforge.train.evaluators import encoder_metrics
from lmforge.train.loggers import open_sink
from lmforge.train.objectives import clm_loss, mlm_nsp_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.optimizer_state import load_optimizer_state, save_optimizer_state
from lmforge.train.runtime import (
    choose_device,
    choose_muon_precision,
    choose_precision,
    compile_blocks,
    keep_freed_memory,
    seed_everything,
    warn_if_slow,
)
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Evaluator, Objective, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """What a run changes in the session; every field left None takes pretraining's choice.

    objective: the loss and its eval record (default: train.objective's).
    sources:   (config with the global batch size) -> (train batches, validation batches);
               default: windows or MLM pairs from data.dir.
    tokenizer: the tokenizer written into the run (default: data.dir's).
    build:     the starting model, e.g. base weights under a classifier head, frozen layers,
               LoRA adapters, a pruned model (default: randomly initialised from cfg.model).
    run_files: writes a run's extra files (labels.json, tasks.json, ...) once, at the start.
    unused_parameters: tells DDP that a step may leave some parameters without a gradient.
    resume_finished: resuming a run whose training is over (train.max_steps reached or stopped
               early) returns its summary instead of refusing, so the work a job does after
               training (keeping the best epoch, averaging a soup) completes after a kill there.
    """

    objective: tuple[Objective, Evaluator | None] | None = None
    sources: Callable[[RunConfig], Sources] | None = None
    tokenizer: Tokenizer | None = None
    build: Callable[[], torch.nn.Module] | None = None
    run_files: Callable[[Path], None] | None = None
    unused_parameters: bool = False  # some parameters get no gradient in a step (task heads)
    resume_finished: bool = False


def _objective(cfg: RunConfig) -> tuple[Objective, Evaluator | None]:
    """The loss of train.objective and its eval record (None: the trainer's mean loss)."""
    if cfg.train.objective == "clm":
        if cfg.model.arch != "gpt":
            raise ConfigError(
                "train.objective=clm trains a causal GPT; for model.arch=bert set "
                "train.objective=mlm+nsp or mlm"
            )
        return clm_loss, None
    if cfg.train.objective.startswith("mlm"):
        return mlm_nsp_loss, encoder_metrics
    raise ConfigError(
        f"train.objective={cfg.train.objective} is for `lmforge finetune classify`; pretrain "
        "with clm, mlm or mlm+nsp"
    )


def train(
    cfg: RunConfig,
    run_dir: Path,
    resume_from: Path | None,
    plan: TrainingPlan | None = None,
) -> dict[str, Any]:
    """Train into run_dir (from checkpoint resume_from, if given) as the plan says."""
    plan = plan or TrainingPlan()
    device = choose_device(cfg.train.device)
    ctx = _join_processes(cfg, device)
    if ctx.is_main and cfg.train.dtype != "auto":  # auto measured its choice
        warn_if_slow(device, cfg.train.dtype)
    cfg = resolve_precision(cfg, device, ctx)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        return _train_here(cfg, run_dir, resume_from, plan, device, ctx)
    finally:
        shutdown()


def resolve_precision(
    cfg: RunConfig,
    device: torch.device,
    ctx: DistContext,
    measure: Callable[[int], dict[str, float]] | None = None,
) -> RunConfig:
    """train.dtype=auto (and train.muon_dtype=auto) made concrete, once: rank 0 times bf16
    against fp32 and tells the other ranks; the choice goes into config.json, so --resume reuses
    it, even on another CPU."""
    if cfg.train.dtype == "auto":
        measure = measure or _model_calibration(cfg)
        choice, speeds = (
            choose_precision(device, cfg.model.n_embd, measure) if ctx.is_main else ("", {})
        )
        choice = broadcast_choice(choice, ctx)
        if ctx.is_main:
            ratio = f"bf16 at {speeds['bfloat16'] / speeds['float32']:.2f}x fp32" if speeds else ""
            log.info("train.dtype=auto: %s (%s)", choice, ratio or device.type)
        cfg = replace(cfg, train=replace(cfg.train, dtype=choice))
    if cfg.train.optimizer == "muon" and cfg.train.muon_dtype == "auto":
        choice, seconds = (
            choose_muon_precision(device, cfg.model.n_embd) if ctx.is_main else ("", {})
        )
        choice = broadcast_choice(choice, ctx)
        if ctx.is_main:
            figures = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in seconds.items())
            log.info("train.muon_dtype=auto: %s (Newton-Schulz %s)", choice, figures or "cuda")
        cfg = replace(cfg, train=replace(cfg.train, muon_dtype=choice))
    return cfg


BF16_HOPELESS = 0.5  # a lone bf16 product below half fp32's speed: the model is not timed


def _model_calibration(cfg: RunConfig) -> Callable[[int], dict[str, float]] | None:
    """Time the run's own model (a throwaway copy, built without touching the seeded RNG) on
    up to 4,096 tokens, in tokens/s, unless a lone bf16 product already runs below
    BF16_HOPELESS of fp32 (then those product speeds decide, in a fraction of a second); None (a
    lone product instead) before the vocabulary is known."""
    if cfg.model.vocab_size == 0:
        return None

    def measure(width: int) -> dict[str, float]:
        lone = runtime.precision_speeds(width)
        if lone["bfloat16"] < BF16_HOPELESS * lone["float32"]:
            # bf16 emulated (AVX2): even a lone product is far slower, so the model's own pass
            # cannot win, and timing it in bf16 would take minutes
            return lone
        with torch.random.fork_rng():
            model = build_model(cfg)
        length = cfg.model.block_size
        rows = max(1, min(cfg.train.batch_size, 4096 // length))
        return runtime.model_speeds(model, rows, length)

    return measure


def _join_processes(cfg: RunConfig, device: torch.device) -> DistContext:
    """The process group of a torchrun launch (dist.strategy ddp), or a single process."""
    ctx = init_distributed(device.type)
    if not ctx.is_main:  # one voice: the other workers only warn
        logging.getLogger("lmforge").setLevel(logging.WARNING)
    if ctx.active and cfg.dist.strategy == "none":
        shutdown()
        raise ConfigError(
            f"started as {ctx.world_size} processes (torchrun) but dist.strategy=none; "
            "add --set dist.strategy=ddp"
        )
    return ctx


def _global_sources(
    cfg: RunConfig, plan: TrainingPlan, ctx: DistContext
) -> tuple[Callable[[int, int], Batch], Callable[[], list[Batch]], Tokenizer | None]:
    """Batch sources; under DDP every rank takes its rows of the global batch (micro batch x
    world size), drawn exactly as one process with that batch would draw it."""
    sizes = tuple((step, size * ctx.world_size) for step, size in cfg.train.batch_size_schedule)
    world = replace(
        cfg,
        train=replace(
            cfg.train,
            batch_size=cfg.train.batch_size * ctx.world_size,
            batch_size_schedule=sizes,
        ),
    )
    if plan.sources is not None:
        _refuse_schedules(cfg)
        (train_batch, val_batches), tokenizer = plan.sources(world), plan.tokenizer
    else:
        shards, tokenizer = open_data(cfg)
        train_batch, val_batches = batch_sources(world, shards, tokenizer)
    if not ctx.active:
        return train_batch, val_batches, tokenizer
    return (lambda step, micro: rank_rows(train_batch(step, micro), ctx)), val_batches, tokenizer


def _refuse_schedules(cfg: RunConfig) -> None:
    """Fine-tunes draw examples, not windows: the shape schedules are pretraining's."""
    for key in ("seq_len_schedule", "batch_size_schedule"):
        if getattr(cfg.train, key):
            raise ConfigError(
                f"train.{key} applies to pretraining (clm, mlm) only; remove it from this "
                "fine-tune's config"
            )


def prepare_model(
    cfg: RunConfig,
    plan: TrainingPlan,
    device: torch.device,
    ctx: DistContext,
    resume_from: Path | None,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model (its weights resumed, blocks compiled or checkpointed as configured) and the
    module the trainer calls: the model itself (FSDP shards it in place) or its DDP wrapper."""
    if device.type == "cpu" and fixed_shapes(cfg, plan):
        keep_freed_memory()
    fsdp = ctx.active and cfg.dist.strategy == "fsdp"
    if fsdp and plan.build is None:
        return (model := _built_sharded(cfg, device, ctx, resume_from)), model
    model = _full_model(cfg, plan, device, resume_from)
    _switches(model, cfg)
    if fsdp:
        shard(model, cfg.train.dtype, device)  # in place: parameters become DTensor shards
        return model, model
    if ctx.active:
        ids = [ctx.local_rank] if device.type == "cuda" else None
        unused = plan.unused_parameters
        return model, DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
    return model, model


def fixed_shapes(cfg: RunConfig, plan: TrainingPlan) -> bool:
    """Whether every step's batch has one of a few shapes (pretraining's CLM windows). Only
    then does keeping freed memory in the heap pay: with a new padded length every step (the
    fine-tunes, MLM sentence pairs) the never-trimmed heap fragments, and a classify run of
    the issue 20 recipe grew from 1.8 to 13.4 GB in half an epoch."""
    return plan.sources is None and cfg.train.objective == "clm"


def _full_model(
    cfg: RunConfig, plan: TrainingPlan, device: torch.device, resume_from: Path | None
) -> torch.nn.Module:
    """The whole model, seeded, built as the plan says, with the resumed weights."""
    seed_everything(cfg.train.seed)
    model = plan.build() if plan.build is not None else build_model(cfg)
    if plan.build is None and resume_from is None:
        fit_ngram_vocabulary(model, cfg)  # a new model counts its n-grams (if it has any)
    model = model.to(device)
    if resume_from is not None:
        ckpt.load_weights(model, resume_from / ckpt.weights_name(model))
    return model


def _switches(model: torch.nn.Module, cfg: RunConfig) -> None:
    body = getattr(model, "body", model)  # a classifier's Transformer
    body.activation_checkpointing = cfg.dist.activation_checkpointing
    if cfg.train.compile:
        compile_blocks(model)


def _built_sharded(
    cfg: RunConfig, device: torch.device, ctx: DistContext, resume_from: Path | None
) -> torch.nn.Module:
    """FSDP without the whole model on every rank: built on the meta device and sharded, each
    rank allocates only its shards; rank 0 alone builds the real model (seeded as a single
    process would) and broadcasts it into them."""
    seed_everything(cfg.train.seed)  # the other ranks' dropout draws stay deterministic
    with torch.device("meta"):
        model = build_model(cfg)
    _switches(model, cfg)
    shard(model, cfg.train.dtype, device)
    model.to_empty(device=device)
    full = _full_model(cfg, TrainingPlan(), device, resume_from) if ctx.is_main else None
    fill_shards(model, full)
    return model


def _saver(
    cfg: RunConfig,
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ctx: DistContext,
) -> Callable[[dict[str, Any], bool], None]:
    """Checkpoints: full weights (gathered from FSDP shards) and trainer state written by rank
    0, the optimizer state written by every rank as DCP shards that any world size can read."""
    fsdp = ctx.active and cfg.dist.strategy == "fsdp"

    def save(state: dict[str, Any], best: bool) -> None:
        step = state["state"]["step"]
        tensors = full_weights(model) if fsdp else None  # a collective: every rank joins
        if ctx.is_main:
            ckpt.fresh_staging_dir(run_dir, step)
        barrier(ctx)
        staged = ckpt.staging_dir(run_dir, step) / layout.STATE_DIR / layout.OPTIMIZER_DIR
        save_optimizer_state(model, optimizer, staged)  # a collective too
        state = {**state, "optimizer": None, "dist": _layout(cfg, ctx)}
        if ctx.is_main:  # one writer; the others wait for it
            keep = cfg.train.keep_last
            ckpt.save_checkpoint(run_dir, model, state, best, keep, tensors, staged=True)
        barrier(ctx)

    return save


def _layout(cfg: RunConfig, ctx: DistContext) -> dict[str, int]:
    """How the global batch was split, so a resume at another world size can keep it."""
    return {"world_size": ctx.world_size, "batch_size": cfg.train.batch_size}


def same_global_batch(cfg: RunConfig, saved: dict[str, Any], world_size: int) -> RunConfig:
    """Resuming on another number of processes: split the same global batch over them (unless
    train.batch_size was changed too), so the run continues with the same batches."""
    split = saved.get("dist")  # None: a new run, or a checkpoint older than this record
    if split is None or split["world_size"] == world_size:
        return cfg
    if cfg.train.batch_size != split["batch_size"]:
        return cfg
    rows = split["world_size"] * split["batch_size"]
    if rows % world_size:
        raise ConfigError(
            f"the run's global batch of {rows} rows ({split['world_size']} processes x "
            f"{split['batch_size']}) does not split over {world_size} processes; resume on a "
            "number of processes that divides it, or set train.batch_size"
        )
    log.info(
        "resuming a %d-process run on %d: train.batch_size %d -> %d keeps the global batch of %d",
        split["world_size"],
        world_size,
        split["batch_size"],
        rows // world_size,
        rows,
    )
    return replace(cfg, train=replace(cfg.train, batch_size=rows // world_size))


def _check_resumable(cfg: RunConfig, run_dir: Path, trainer: Trainer, finished_ok: bool) -> None:
    """Refuse to resume a run with nothing left to train (unless finished_ok: then only say so)."""
    start = trainer.state.step
    over = trainer.state.stopped_early or start >= cfg.train.max_steps
    if over and finished_ok:
        log.info("%s: training already ended at step %d; finishing the run", run_dir, start)
        return
    if trainer.state.stopped_early:
        raise LMForgeError(
            f"{run_dir} stopped early at step {start} (train.patience={cfg.train.patience}); "
            "start a new run to train further"
        )
    if start >= cfg.train.max_steps:
        raise LMForgeError(
            f"{run_dir} already reached train.max_steps={cfg.train.max_steps}; to train longer "
            f"resume with --set train.max_steps=N (N > {start})"
        )


def _train_here(
    cfg: RunConfig,
    run_dir: Path,
    resume_from: Path | None,
    plan: TrainingPlan,
    device: torch.device,
    ctx: DistContext,
) -> dict[str, Any]:
    saved = ckpt.load_trainer_state(resume_from) if resume_from is not None else {}
    cfg = same_global_batch(cfg, saved, ctx.world_size)
    train_batch, val_batches, tokenizer = _global_sources(cfg, plan, ctx)
    model, train_model = prepare_model(cfg, plan, device, ctx, resume_from)
    optimizer = build_optimizer(model, cfg.train)  # after sharding: it steps the shards
    loss, metrics = plan.objective or _objective(cfg)
    trainer = Trainer(
        train_model,
        optimizer,
        train_batch,
        cfg.train,
        loss,
        val_batches,
        save=_saver(cfg, run_dir, model, optimizer, ctx),
        metrics=metrics,
    )
    if resume_from is not None:
        trainer.load_state_dict(saved)
        if saved.get("optimizer") is None:  # saved apart, sharded: read at this world size
            path = resume_from / layout.STATE_DIR / layout.OPTIMIZER_DIR
            load_optimizer_state(model, optimizer, path)
    _check_resumable(cfg, run_dir, trainer, plan.resume_finished)
    if ctx.is_main:
        if resume_from is None:  # a run started over: the records of its killed first attempt
            (run_dir / layout.METRICS_FILE).unlink(missing_ok=True)
        ckpt.write_run_files(run_dir, cfg, tokenizer)
        if plan.run_files is not None:
            plan.run_files(run_dir)
    _log_model(cfg, model, ctx, device)
    start = trainer.state.step
    sink = open_sink(cfg.train.logger, run_dir, start, to_dict(cfg)) if ctx.is_main else None
    trainer.tracker = Tracker(
        run_dir if ctx.is_main else None,
        cfg.train.max_steps,
        start,
        cfg.train.progress and ctx.is_main,
        verbose=ctx.is_main,
        sink=sink,
    )
    signals = StopSignals(announce=ctx.is_main)
    trainer.stop = signals.agreed
    try:
        with signals.installed():
            trainer.fit()
    finally:
        trainer.tracker.close()
    if trainer.interrupted_at is not None:
        raise Interrupted(signals.signum or signal.SIGTERM, trainer.interrupted_at)
    return _summary(cfg, run_dir, ctx, trainer)


def _log_model(cfg: RunConfig, model: torch.nn.Module, ctx: DistContext, device: Any) -> None:
    micro = cfg.train.batch_size * cfg.model.block_size
    log.info(
        "model: %s parameters, %.3g FLOPs/token; %s tokens/step (%d x %d accumulation x %d "
        "processes); device %s",
        f"{model.num_params():,}",
        model.flops_per_token(),
        f"{micro * cfg.train.grad_accum * ctx.world_size:,}",
        micro,
        cfg.train.grad_accum,
        ctx.world_size,
        device,
    )


def _summary(cfg: RunConfig, run_dir: Path, ctx: DistContext, trainer: Trainer) -> dict[str, Any]:
    """What the run did: steps, early stop, the best and last evaluations, first/last losses."""
    state, tracker = trainer.state, trainer.tracker
    vals, losses = tracker.val_points, tracker.train_points
    return {
        "run_dir": str(run_dir),
        "is_main": ctx.is_main,  # under torchrun only rank 0 reports
        "objective": cfg.train.objective,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best_metric": cfg.train.best_metric,
        "best_score": state.best_score,
        "best_step": state.best_step,
        "best_metrics": tracker.evals.get(state.best_step, {}),
        "last_metrics": tracker.last_eval,
        "skipped_steps": state.skipped_steps,
        "first_val_loss": vals[0][1] if vals else math.nan,
        "last_val_loss": state.last_val_loss,
        "best_val_loss": state.best_val_loss,
        "first_loss": losses[0][1] if losses else math.nan,
        "last_loss": losses[-1][1] if losses else math.nan,
        "loss_plot": str(run_dir / layout.LOSS_PLOT),
    }
