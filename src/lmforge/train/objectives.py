"""Training objectives: pure functions (model, batch) -> scalar loss, and evaluation metrics.

The encoder objectives call the model's parts (`encode`, `mlm_logits`, `nsp_logits`) rather than
its forward, so the vocabulary projection runs on the masked positions only (about 15% of them).
"""

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.errors import ConfigError


def clm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Causal-LM loss: mean over positions of -log p(x_{t+1} | x_{≤t}), ignoring targets of -100.

    The model computes it from its last hidden states (the head and softmax fused, no full
    logits tensor); through its forward, so DDP and compiled wrappers see the call."""
    return model(batch.inputs, targets=batch.targets)


def _encode(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The encoder's hidden states (B, T, C) for a batch."""
    return model.encode(batch.inputs, batch.token_types, batch.attention_mask)


def _masked_logits(
    model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM logits (N, V) at the N positions whose target is not -100, and those targets (N,)."""
    chosen = targets != IGNORE_INDEX  # (B, T)
    return model.mlm_logits(hidden[chosen]), targets[chosen]  # (N, C) -> (N, V)


def _mlm_from_hidden(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits, chosen = _masked_logits(model, hidden, targets)
    if chosen.numel() == 0:  # nothing masked: a zero that keeps the graph, not 0/0 = nan
        return hidden.sum() * 0.0
    return F.cross_entropy(logits.float(), chosen)


def mlm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Masked-LM loss: -(1/N) Σ_{i: target_i ≠ -100} log p(target_i | masked input).

    Equals cross-entropy over the full (B, T, V) logits with ignore_index=-100, but projects only
    the N masked hidden states onto the vocabulary. A batch with nothing masked gives 0.
    """
    return _mlm_from_hidden(model, _encode(model, batch), batch.targets)


def nsp_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-sentence loss: -(1/B) Σ_b log p(label_b | [CLS]_b), labels 0 = IsNext, 1 = NotNext."""
    if batch.labels is None:
        raise ValueError("nsp_loss needs batch.labels (NSP pairs); this batch has none")
    logits = model.nsp_logits(_encode(model, batch))  # (B, 2)
    return F.cross_entropy(logits.float(), batch.labels)


def mlm_nsp_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """BERT pretraining loss: mlm_loss + nsp_loss, from one pass of the encoder.

    A batch without labels (MLM-only data) gives mlm_loss alone.
    """
    hidden = _encode(model, batch)
    loss = _mlm_from_hidden(model, hidden, batch.targets)
    if batch.labels is not None:
        loss = loss + F.cross_entropy(model.nsp_logits(hidden).float(), batch.labels)
    return loss


def classification_loss(
    model: nn.Module,
    batch: Batch,
    *,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequence classification loss: Σ_b w_{y_b} · CE_ε(logits_b, y_b) / Σ_b w_{y_b}.

    CE_ε is cross-entropy against the smoothed target (1 - ε)·onehot(y) + ε/K (K classes,
    ε = label_smoothing), and w are the class weights (all 1 by default), as torch's
    cross_entropy defines them. Configure it with functools.partial, e.g.
    `partial(classification_loss, label_smoothing=0.1)`, to keep the (model, batch) signature.
    """
    if batch.labels is None:
        raise ValueError("classification_loss needs batch.labels; this batch has none")
    logits = model(batch.inputs, batch.token_types, batch.attention_mask).float()  # (B, K)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    return F.cross_entropy(logits, batch.labels, weight=weight, label_smoothing=label_smoothing)


@torch.no_grad()
def mlm_nsp_metrics(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """MLM and NSP loss and accuracy over batches, each pooled over all its predictions.

    mlm_loss = Σ CE / N and mlm_accuracy = #(argmax = target) / N over the N masked tokens of
    every batch (not a mean of batch means); mlm_hidden_accuracy likewise over the masked tokens
    whose input does not show the target ([MASK] or a random token): BERT leaves 10% of the
    chosen tokens visible, which a model that copies its input gets right for free. nsp_loss and
    nsp_accuracy likewise over the sequences, present only when the batches carry NSP labels.
    No masked tokens gives nan.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    names = ("mlm_loss", "mlm_correct", "mlm_n", "mlm_hidden_correct", "mlm_hidden_n")
    sums = dict.fromkeys((*names, "nsp_loss", "nsp_correct", "nsp_n"), 0.0)
    for batch in batches:
        batch = batch.to(device)
        hidden = _encode(model, batch)
        logits, targets = _masked_logits(model, hidden, batch.targets)
        logits = logits.float()
        right = logits.argmax(-1) == targets  # (N,)
        unseen = batch.inputs[batch.targets != IGNORE_INDEX] != targets  # (N,)
        sums["mlm_loss"] += F.cross_entropy(logits, targets, reduction="sum").item()
        sums["mlm_correct"] += right.sum().item()
        sums["mlm_n"] += targets.numel()
        sums["mlm_hidden_correct"] += (right & unseen).sum().item()
        sums["mlm_hidden_n"] += unseen.sum().item()
        if batch.labels is not None:
            nsp = model.nsp_logits(hidden).float()  # (B, 2)
            sums["nsp_loss"] += F.cross_entropy(nsp, batch.labels, reduction="sum").item()
            sums["nsp_correct"] += (nsp.argmax(-1) == batch.labels).sum().item()
            sums["nsp_n"] += batch.labels.numel()
    model.train(was_training)
    metrics = {}
    for task in ("mlm", "nsp"):
        n = sums[f"{task}_n"]
        if task == "mlm" or n:
            metrics[f"{task}_loss"] = sums[f"{task}_loss"] / n if n else math.nan
            metrics[f"{task}_accuracy"] = sums[f"{task}_correct"] / n if n else math.nan
    n = sums["mlm_hidden_n"]
    metrics["mlm_hidden_accuracy"] = sums["mlm_hidden_correct"] / n if n else math.nan
    return metrics


def multitask_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    logits = model(batch.inputs, batch.token_types, batch.attention_mask, batch.task).float()
    return F.cross_entropy(logits, batch.labels, label_smoothing=label_smoothing)


def sft_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on completion tokens only (targets -100 elsewhere), packed or padded."""
    if batch.segments is not None:
        logits = model(batch.inputs, segments=batch.segments)
    else:
        logits = model(batch.inputs, attention_mask=batch.attention_mask)
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.targets.flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T, averaged over positions (..., V)."""
    vocab = student_logits.size(-1)
    student = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """α · soft-target loss + (1 − α) · cross-entropy on the hard targets (−100 ignored)."""
    check_distillation(temperature, alpha)
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(
        student_logits.reshape(-1, student_logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    return alpha * soft + (1 - alpha) * hard


def check_distillation(temperature: float, alpha: float) -> None:
    """Reject a temperature <= 0 or a soft-target weight outside [0, 1]."""
    if temperature <= 0:
        raise ConfigError(f"--temperature must be > 0 (2 is typical); got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (the soft-target weight); got {alpha}")


def distillation_objective(
    teacher: nn.Module, temperature: float, alpha: float
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """A trainer objective: the student's distillation loss against a frozen teacher."""
    check_distillation(temperature, alpha)
    teacher.eval().requires_grad_(False)

    def objective(student: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(batch.inputs)
        return distillation_loss(
            student(batch.inputs), teacher_logits, batch.targets, temperature, alpha
        )

    return objective
