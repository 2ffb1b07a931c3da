"""Evaluators: (model, validation batches) -> the eval record each kind of run logs."""

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import Batch
from lmforge.evaluate import (
    classification_metrics,
    format_confusion_matrix,
    perplexity_from_nll,
    predict_logits,
)
from lmforge.train.objectives import clm_loss, mlm_nsp_metrics

log = logging.getLogger(__name__)
SCORES = ("accuracy", "macro_precision", "macro_recall", "macro_f1")  # per task, and their mean


def encoder_metrics(model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """BERT's eval record: val_loss (MLM + NSP loss) and each task's loss and accuracy."""
    metrics = {f"val_{k}": v for k, v in mlm_nsp_metrics(model, batches).items()}
    return {"val_loss": metrics["val_mlm_loss"] + metrics.get("val_nsp_loss", 0.0), **metrics}


@torch.no_grad()
def lm_metrics(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """The plain next-token loss on validation batches (and its perplexity), whatever loss the
    run trains with: a distilled student stays comparable with any language model."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [clm_loss(model, batch.to(device)).item() for batch in batches]
    model.train(was_training)
    loss = sum(losses) / max(len(losses), 1)
    return {"val_loss": loss, "val_ppl": perplexity_from_nll(loss)}


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


class MultiTaskEval:
    """Per-task scores and their means; the last record is kept for the summary."""

    def __init__(self, task_labels: Mapping[str, list[str]]) -> None:
        self.tasks = dict(task_labels)  # task name -> its label names
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
        for name, label_names in self.tasks.items():
            task_logits, task_labels = torch.cat(logits[name]), torch.cat(labels[name])
            metrics = classification_metrics(task_logits.argmax(1), task_labels, len(label_names))
            losses.append(F.cross_entropy(task_logits, task_labels).item())
            record |= {f"val_{name}_{key}": metrics[key] for key in SCORES}
        n = len(self.tasks)
        record["val_loss"] = sum(losses) / n
        for key in SCORES:
            record[f"val_{key}"] = sum(record[f"val_{t}_{key}"] for t in self.tasks) / n
        self.last = record
        return record
