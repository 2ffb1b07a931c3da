"""Distillation loss: zero for a perfect student, the right mix, gradients only to the student."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.compress.distill import (
    distillation_loss,
    distillation_objective,
    soft_target_loss,
)
from lmforge.config import ModelConfig
from lmforge.data.batches import Batch
from lmforge.errors import ConfigError
from lmforge.model import GPT


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(seed)) * 3


def test_a_student_equal_to_the_teacher_has_zero_soft_loss() -> None:
    logits = _logits(0)
    targets = torch.randint(0, 11, (2, 5))
    assert float(distillation_loss(logits, logits, targets, 1.0, alpha=1.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(soft_target_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_soft_loss_is_t_squared_kl_by_hand() -> None:
    s, t, temp = _logits(1), _logits(2), 2.0
    p_t = F.softmax(t / temp, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, dim=-1))).sum(-1).mean()
    assert float(soft_target_loss(s, t, temp)) == pytest.approx(float(kl) * temp**2, rel=1e-5)


def test_alpha_mixes_soft_and_hard_and_ignores_minus_100() -> None:
    s, t = _logits(3), _logits(4)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, :2] = -100
    hard = F.cross_entropy(s.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    soft = soft_target_loss(s, t, 3.0)
    mixed = distillation_loss(s, t, targets, 3.0, alpha=0.3)
    assert float(mixed) == pytest.approx(0.3 * float(soft) + 0.7 * float(hard), rel=1e-5)
    assert float(distillation_loss(s, t, targets, 3.0, alpha=0.0)) == pytest.approx(float(hard))
    assert math.isfinite(float(mixed))


def test_objective_trains_the_student_only() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=23)
    teacher, student = GPT(cfg), GPT(cfg)
    ids = torch.randint(0, 23, (2, 9))
    objective = distillation_objective(teacher, temperature=2.0, alpha=0.5)
    objective(student, Batch(inputs=ids[:, :-1], targets=ids[:, 1:])).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("temperature", "alpha", "needle"), [(0.0, 0.5, "temperature"), (2.0, 1.5, "alpha")]
)
def test_bad_values(temperature: float, alpha: float, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        distillation_loss(
            _logits(0), _logits(1), torch.zeros(2, 5, dtype=torch.long), temperature, alpha
        )
