"""Sequence-classification fine-tuning (`lmforge finetune classify`) and batch prediction
(`lmforge predict`), on the one Trainer that pretraining uses.

A fine-tuned run directory holds config.json (the base's model section, train.objective =
classify and the finetune section), model.safetensors (the SequenceClassifier with the best
validation score), tokenizer.json, labels.json, metrics.jsonl (one record per epoch with the
confusion matrix), loss.png and confusion_matrix.png (of the kept model).
"""

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.config import (
    ModelConfig,
    RunConfig,
    apply_overrides,
    from_dict,
    read_config_file,
    to_dict,
)
from lmforge.data.batches import Batch
from lmforge.data.classify import (
    LABELS_FILE,
    EncodedExamples,
    EpochBatches,
    Example,
    build_label_map,
    classification_batches,
    encode_examples,
    read_examples,
    save_label_map,
)
from lmforge.errors import CheckpointError, ConfigError, LMForgeError
from lmforge.evaluate import (
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
    predict_logits,
)
from lmforge.files import check_output_dir, staged_directory
from lmforge.model.heads import SequenceClassifier
from lmforge.model.lora import add_lora, trainable_share
from lmforge.plots import plot_confusion_matrix
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import classification_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import choose_device, seed_everything
from lmforge.train.tracker import LOSS_PLOT, Tracker
from lmforge.train.trainer import Trainer

log = logging.getLogger(__name__)
CONFUSION_PLOT = "confusion_matrix.png"


# Fine-tuning defaults from the BERT paper (Devlin et al. 2019, appendix A.3): AdamW with
# β2 = 0.999, weight decay 0.01, linear decay to 0 after a 10% warmup, lr in 2e-5 … 5e-5.
_FINETUNE_TRAIN_DEFAULTS = MappingProxyType(
    {
        "objective": "classify",
        "lr": 5e-5,
        "min_lr": 0.0,
        "schedule": "linear",
        "batch_size": 32,
        "weight_decay": 0.01,
        "beta2": 0.999,
        "eps": 1e-6,
        "best_metric": "val_accuracy",
    }
)
# derived from finetune.epochs, finetune.warmup_fraction and the data size
_DERIVED_TRAIN_KEYS = (
    "objective",
    "max_steps",
    "warmup_steps",
    "eval_interval",
    "checkpoint_interval",
    "eval_batches",
)


def load_finetune_config(
    base_model: ModelConfig,
    path: str | Path | None,
    sets: list[str],
    finetune: Mapping[str, Any],
) -> RunConfig:
    """A fine-tune's config: the base run's model, the BERT-paper training defaults, then the
    config file, `--set` overrides and the `finetune` values given as command-line flags."""
    user = apply_overrides(read_config_file(path) if path else {}, sets)
    model = model_overrides(user)
    train = user.get("train") or {}
    fixed = [key for key in _DERIVED_TRAIN_KEYS if key in train]
    if fixed:
        raise ConfigError(
            f"train.{fixed[0]} is set by the fine-tune itself (objective classify, lengths from "
            "finetune.epochs, finetune.warmup_fraction and the data size); drop it"
        )
    if user.get("data"):
        raise ConfigError("data.* is not used when fine-tuning; give --train and --valid files")
    data = {
        "model": {**to_dict(base_model), **model},
        "train": {**_FINETUNE_TRAIN_DEFAULTS, **train},
        "finetune": {**(user.get("finetune") or {}), **finetune},
        "lora": user.get("lora") or {},
    }
    return from_dict(RunConfig, data)


def classify_config(
    base: Path, path: Path | None, sets: list[str], inputs: Mapping[str, Any]
) -> RunConfig:
    """The resolved config of a fine-tune of run `base`; inputs are finetune.* values (files,
    columns) taken from command-line flags as given."""
    base_cfg = ckpt.read_run_config(base)
    if base_cfg.train.objective == "classify":
        raise CheckpointError(
            f"{base} is already a classifier; fine-tune a pretrained run (lmforge pretrain or "
            "lmforge import hf)"
        )
    return load_finetune_config(base_cfg.model, path, sets, {"base": str(base), **inputs})


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class ClassificationData:
    """The label map and both splits, encoded for the base model."""

    labels: list[str]
    train: EncodedExamples
    valid: EncodedExamples


def _read(cfg: RunConfig, file: str, split: str, with_labels: bool = True) -> list[Example]:
    ft = cfg.finetune
    return read_examples(
        file,
        ft.text_column,
        ft.label_column if with_labels else None,
        ft.text_pair_column or None,
        split=split,
    )


def load_data(cfg: RunConfig, tokenizer: Tokenizer) -> ClassificationData:
    """Read, label-map and encode the train and valid files; warn about truncated texts."""
    if not cfg.finetune.train_file or not cfg.finetune.valid_file:
        raise LMForgeError("fine-tuning needs --train FILE and --valid FILE")
    train = _read(cfg, cfg.finetune.train_file, "train")
    valid = _read(cfg, cfg.finetune.valid_file, "valid")
    labels = build_label_map(train)
    arch, length = cfg.model.arch, cfg.model.block_size
    encoded = [
        encode_examples(examples, tokenizer, arch, length, labels, split)
        for examples, split in ((train, "train"), (valid, "valid"))
    ]
    for split, enc in zip(("train", "valid"), encoded, strict=True):
        if note := enc.truncation_note():
            log.warning("warning: %s split: %s (model.block_size)", split, note)
    return ClassificationData(labels, *encoded)


def balanced_class_weights(class_ids: Iterable[int], n_classes: int) -> list[float]:
    """w_c = n / (K · n_c), scikit-learn's "balanced": every class weighs the same in total."""
    counts = torch.bincount(torch.as_tensor(list(class_ids)), minlength=n_classes).double()
    return (counts.sum() / (n_classes * counts.clamp(min=1))).tolist()


# ---------------------------------------------------------------- evaluation


class ClassifierEval:
    """The per-epoch eval record: val_loss (unweighted CE), accuracy, macro P/R/F1, confusion."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.last: dict[str, Any] = {}

    def __call__(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, Any]:
        logits, targets = predict_logits(model, batches)
        assert targets is not None  # validation batches carry labels
        metrics = classification_metrics(logits.argmax(1), targets, len(self.labels))
        self.last = metrics
        log.info("%s", format_confusion_matrix(metrics["confusion_matrix"], self.labels))
        scores = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "confusion_matrix")
        return {
            "val_loss": F.cross_entropy(logits, targets).item(),
            **{f"val_{name}": metrics[name] for name in scores},
        }


# ---------------------------------------------------------------- fine-tune


def _schedule(cfg: RunConfig, batches: EpochBatches, valid_batches: int) -> RunConfig:
    """Derive the step counts from epochs: evaluate and save at the end of every epoch."""
    max_steps = batches.steps_for(cfg.finetune.epochs)
    per_epoch = min(max_steps, -(-batches.batches_per_epoch // cfg.train.grad_accum))
    return epoch_schedule(cfg, max_steps, per_epoch, valid_batches)


def epoch_schedule(cfg: RunConfig, max_steps: int, per_epoch: int, valid_batches: int) -> RunConfig:
    """cfg with max_steps, a warmup of finetune.warmup_fraction, and an eval and a save every
    epoch over all valid_batches."""
    train = replace(
        cfg.train,
        max_steps=max_steps,
        warmup_steps=round(cfg.finetune.warmup_fraction * max_steps),
        eval_interval=per_epoch,
        checkpoint_interval=per_epoch,
        eval_batches=valid_batches,
    )
    return replace(cfg, train=train)


def model_overrides(user: dict[str, Any]) -> dict[str, Any]:
    """The model.* keys a fine-tune's config may set (only model.dropout: the rest is the
    base run's), popped from user."""
    model = user.pop("model", {}) or {}
    if set(model) - {"dropout"}:
        raise ConfigError(
            f"model.{sorted(set(model) - {'dropout'})[0]} comes from the base run and cannot "
            "change when fine-tuning (only model.dropout can)"
        )
    return model


def _classifier(cfg: RunConfig, n_classes: int, tokenizer: Tokenizer) -> SequenceClassifier:
    """The base run's pretrained body under a freshly initialised classifier layer."""
    ckpt.check_vocab(tokenizer, cfg, cfg.finetune.base)
    body = ckpt.build_model(cfg)
    ckpt.load_base_weights(body, Path(cfg.finetune.base))
    return with_adapters(cfg, SequenceClassifier(body, n_classes, cfg.finetune.dropout))


def with_adapters(cfg: RunConfig, model: SequenceClassifier) -> SequenceClassifier:
    """With lora.r > 0: LoRA on the body's target layers; they and the classifier train."""
    if cfg.lora.r:
        lora = cfg.lora
        add_lora(model, lora.target_list, lora.r, lora.alpha, lora.dropout, ("classifier",))
        trainable, total = trainable_share(model)
        log.info(
            "LoRA: %s of %s parameters train (%.2f%%)",
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
    return model


def finetune_classify(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune cfg.finetune.base on labelled text into run directory `out` (atomically)."""
    check_output_dir(out, overwrite)
    base = Path(cfg.finetune.base)
    tokenizer = Tokenizer.load(base / ckpt.TOKENIZER_FILE)
    data = load_data(cfg, tokenizer)
    device = choose_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = _classifier(cfg, len(data.labels), tokenizer).to(device)
    batches = EpochBatches(data.train, cfg.train.batch_size, cfg.train.seed, cfg.train.grad_accum)
    valid = list(classification_batches(data.valid, cfg.train.batch_size))
    cfg = _schedule(cfg, batches, len(valid))
    weights = None
    if cfg.finetune.class_weights == "balanced":
        weights = balanced_class_weights(data.train.labels or [], len(data.labels))
    evaluator = ClassifierEval(data.labels)
    with staged_directory(out, overwrite) as run_dir:
        ckpt.write_run_files(run_dir, cfg, tokenizer)
        save_label_map(data.labels, run_dir / LABELS_FILE)
        best: dict[str, Any] = {}
        trainer = Trainer(
            model,
            build_optimizer(model, cfg.train),
            batches,
            cfg.train,
            partial(
                classification_loss,
                class_weights=weights,
                label_smoothing=cfg.finetune.label_smoothing,
            ),
            lambda: valid,
            save=_best_saver(run_dir, model, evaluator, best),
            tracker=Tracker(run_dir, cfg.train.max_steps, 0, cfg.train.progress),
            metrics=evaluator,
        )
        try:
            state = trainer.fit()
        finally:
            trainer.tracker.close()
        if not best:  # no epoch beat the untrained classifier: keep the last weights
            log.warning(
                "warning: no epoch improved %s; kept the last weights", cfg.train.best_metric
            )
            _save_best(run_dir, model, evaluator, best, state.step)
    return _summary(cfg, out, data, state.step, best, batches.batches_per_epoch)


def _best_saver(
    run_dir: Path, model: nn.Module, evaluator: ClassifierEval, best: dict[str, Any]
) -> Callable[[dict[str, Any], bool], None]:
    """The Trainer's save hook: keep only the weights (and confusion plot) of the best epoch."""

    def save(trainer_state: dict[str, Any], is_best: bool) -> None:
        if is_best:
            _save_best(run_dir, model, evaluator, best, trainer_state["state"]["step"])

    return save


def _save_best(
    run_dir: Path, model: nn.Module, evaluator: ClassifierEval, best: dict[str, Any], step: int
) -> None:
    ckpt.save_weights(model, run_dir / ckpt.MODEL_FILE, step)
    plot_confusion_matrix(
        evaluator.last["confusion_matrix"], evaluator.labels, run_dir / CONFUSION_PLOT
    )
    best.clear()
    best.update(evaluator.last, step=step)


def _summary(
    cfg: RunConfig,
    out: Path,
    data: ClassificationData,
    steps: int,
    best: dict[str, Any],
    batches_per_epoch: int,
) -> dict[str, Any]:
    per_epoch = batches_per_epoch / cfg.train.grad_accum
    return {
        "run_dir": str(out),
        "labels": data.labels,
        "train_examples": len(data.train),
        "valid_examples": len(data.valid),
        "truncated": {"train": data.train.truncated, "valid": data.valid.truncated},
        "steps": steps,
        "epochs": round(steps / per_epoch, 2),
        "best_epoch": round(best["step"] / per_epoch, 2),
        "best_metric": cfg.train.best_metric,
        "metrics": {k: v for k, v in best.items() if isinstance(v, float | int)},
        "confusion_matrix": format_confusion_matrix(best["confusion_matrix"], data.labels),
        "report": format_classification_report(best, data.labels),
        "confusion_plot": str(out / CONFUSION_PLOT),
        "loss_plot": str(out / LOSS_PLOT),
    }
