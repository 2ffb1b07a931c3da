"""Knowledge distillation (Hinton et al. 2015): a student learns the teacher's soft targets.

loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)

The T² keeps the soft term's gradients on the scale of the hard one as T grows.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.errors import ConfigError


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
