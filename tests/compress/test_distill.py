"""Distillation loss: zero for a perfect student, the right mix, gradients only to the student,
and training with it moves the student toward the teacher (plain LM training does not)."""

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.data.batches import Batch
from lmforge.errors import ConfigError
from lmforge.model import GPT
from lmforge.train.objectives import (
    clm_loss,
    distillation_loss,
    distillation_objective,
    soft_target_loss,
)


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


VOCAB = 23


def _hand_loss(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float
) -> float:
    """α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y) in float64, written out:
    KL = mean over positions of Σ_v p_v (log p_v − log q_v), CE = mean over the positions
    whose target is not -100 of −log softmax(s)_y."""
    s, t = s.double().reshape(-1, s.shape[-1]), t.double().reshape(-1, t.shape[-1])
    log_p = t / temperature - torch.logsumexp(t / temperature, dim=-1, keepdim=True)
    log_q = s / temperature - torch.logsumexp(s / temperature, dim=-1, keepdim=True)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    kept = y.reshape(-1) != -100
    log_softmax = s - torch.logsumexp(s, dim=-1, keepdim=True)
    ce = -log_softmax[kept, y.reshape(-1)[kept]].mean()
    return float(alpha * temperature**2 * kl + (1 - alpha) * ce)


def _targets(seed: int) -> torch.Tensor:
    y = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(seed))
    y[1, 3:] = -100
    return y


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (3.0, 0.25), (0.5, 0.8)])
def test_distillation_loss_matches_the_formula_by_hand(temperature: float, alpha: float) -> None:
    s, t, y = _logits(5), _logits(6), _targets(7)
    expected = _hand_loss(s, t, y, temperature, alpha)
    got = float(distillation_loss(s, t, y, temperature, alpha))
    assert got == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_pure_cross_entropy_and_alpha_one_pure_soft_targets() -> None:
    """α = 0 ignores the teacher; α = 1 ignores the targets (all -100 would make CE NaN)."""
    s, y = _logits(8), _targets(9)
    hard = _hand_loss(s, _logits(10), y, 2.0, alpha=0.0)
    for teacher in (_logits(10), _logits(11), s):
        assert float(distillation_loss(s, teacher, y, 2.0, alpha=0.0)) == pytest.approx(hard)
    t = _logits(12)
    soft = _hand_loss(s, t, y, 2.0, alpha=1.0)
    for targets in (y, torch.full_like(y, -100)):
        assert float(distillation_loss(s, t, targets, 2.0, alpha=1.0)) == pytest.approx(soft)
    assert soft != pytest.approx(hard, rel=0.05)


def _kl_to_teacher(teacher: GPT, student: GPT, ids: torch.Tensor) -> float:
    """Mean over positions of KL(teacher ‖ student) = Σ_v p_v (log p_v − log q_v), at T = 1."""
    with torch.no_grad():
        log_p = F.log_softmax(teacher.eval()(ids), dim=-1)
        log_q = F.log_softmax(student.eval()(ids), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def _random_batch(seed: int, rows: int = 8) -> Batch:
    ids = torch.randint(0, VOCAB, (rows, 17), generator=torch.Generator().manual_seed(seed))
    return Batch(inputs=ids[:, :-1], targets=ids[:, 1:])


def _trained(student: GPT, objective, steps: int = 20) -> GPT:
    """A copy of student after `steps` Adam steps of objective on seeded random batches."""
    student = copy.deepcopy(student).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        objective(student, _random_batch(step)).backward()
        optimizer.step()
    return student


def test_distillation_moves_the_student_toward_the_teacher() -> None:
    """From the same start, 20 steps of distillation bring KL(teacher ‖ student) on held-out
    inputs far down (measured: 0.15 -> 0.05), while plain LM training on the same random tokens
    does not (-> 0.18): the teacher's soft targets are what the student learns. Over three
    teacher/student seeds distillation ended at 0.26-0.35 x the start, 0.21-0.28 x plain."""
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB)
    torch.manual_seed(0)
    teacher = GPT(replace(cfg, init_std=0.1)).eval()  # peaked, input-dependent predictions
    torch.manual_seed(1)
    student = GPT(cfg)
    held_out = _random_batch(999, rows=16).inputs
    start = _kl_to_teacher(teacher, student, held_out)
    objective = distillation_objective(teacher, temperature=2.0, alpha=0.9)
    distilled = _kl_to_teacher(teacher, _trained(student, objective), held_out)
    plain = _kl_to_teacher(teacher, _trained(student, clm_loss), held_out)
    assert distilled < 0.6 * start
    assert distilled < 0.5 * plain
