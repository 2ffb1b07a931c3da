"""What every fine-tune starts from and ends with: the resolved config of a base run, its
tokenizer and model (frozen and LoRA-wrapped as finetune.* and lora.* say), a fresh or resumed
run directory, and the best evaluation's weights kept as the run's model."""

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.config import RunConfig
from lmforge.config.load import finetune_config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.jobs.run_control import check_new_run_dir, newest_checkpoint
from lmforge.model.lora import add_lora, trainable_share
from lmforge.rundir import layout
from lmforge.rundir.load import build_model, check_vocab, load_base_weights, read_run_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import launched_rank

log = logging.getLogger(__name__)


def resolve(
    task: str, base: Path, path: Path | None, sets: list[str], flags: Mapping[str, Any]
) -> RunConfig:
    """The resolved config of fine-tune `task` of run `base` (see config.load.finetune_config)."""
    return finetune_config(read_run_config(base), base, task, path, sets, flags)


def start_run(out: Path, overwrite: bool, resume: bool) -> Path | None:
    """The checkpoint to continue from (resume), or a fresh run directory (checked; cleared
    with overwrite by the main process only)."""
    if resume:
        return newest_checkpoint(out)
    if launched_rank() == 0:
        check_new_run_dir(out, overwrite)
        if out.exists() and overwrite:
            shutil.rmtree(out)
    return None


def log_trainable(model: nn.Module) -> nn.Module:
    """Logs how many of the model's parameters train; the model, unchanged."""
    trainable, total = trainable_share(model)
    log.info(
        "trainable parameters: %s of %s (%.2f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def base_tokenizer(cfg: RunConfig) -> Tokenizer:
    """The base run's tokenizer, checked against the model's vocabulary size."""
    tokenizer = Tokenizer.load(Path(cfg.finetune.base) / layout.TOKENIZER_FILE)
    check_vocab(tokenizer, cfg, cfg.finetune.base)
    return tokenizer


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
        return log_trainable(model)

    return build


def weights_in(directory: Path) -> Path | None:
    """The weights file a checkpoint mirror holds: adapters (LoRA runs) or the whole model."""
    for name in (layout.ADAPTER_FILE, layout.MODEL_FILE):
        if (directory / name).is_file():
            return directory / name
    return None


def keep_best_weights(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Make the best evaluation's weights the run's model.safetensors (the newest ones when no
    evaluation beat the untrained heads at step 0); that evaluation's record. A classifier run
    keeps one weights file, as predict and evaluate --classify read it."""
    best, weights = summary["best_metrics"], weights_in(run_dir / layout.BEST_DIR)
    if summary["best_step"] == 0 or weights is None:
        log.warning("warning: no epoch improved %s; kept the last weights", summary["best_metric"])
        best, weights = summary["last_metrics"], weights_in(run_dir)
    if weights is None:
        raise CheckpointError(f"{run_dir} holds no weights; resume it or start it again")
    tmp = run_dir / f".{layout.MODEL_FILE}.tmp"
    shutil.copyfile(weights, tmp)
    tmp.replace(run_dir / layout.MODEL_FILE)
    (run_dir / layout.ADAPTER_FILE).unlink(missing_ok=True)
    return best
