"""The optimizer, its schedule and gradient clipping against their update rules, step by step.

AdamW (Loshchilov & Hutter 2019), for each parameter θ with gradient g at step t:
    θ ← θ − lr·λ·θ                    (decoupled weight decay, matrices only)
    m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
    m̂ = m/(1 − β₁ᵗ),       v̂ = v/(1 − β₂ᵗ)
    θ ← θ − lr·m̂/(√v̂ + ε)
Clipping: g ← g·min(1, c/‖g‖₂), ‖g‖₂ over all gradients as one vector.
"""

import dataclasses
import math

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.trainer import clip_gradients


class TwoParams(nn.Module):
    """A matrix (decayed) and a bias (not decayed), as param_groups splits them."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 4, generator=g))
        self.bias = nn.Parameter(torch.randn(4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.weight + self.bias)


def adamw_by_hand(
    values: list[float],
    grads_per_step: list[list[float]],
    lrs: list[float],
    cfg: TrainConfig,
    decay: bool,
) -> list[float]:
    """Each scalar of one parameter through the AdamW rule, in float64 Python."""
    theta = list(values)
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    wd = cfg.weight_decay if decay else 0.0
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        for i, g in enumerate(grads):
            theta[i] -= lr * wd * theta[i]
            m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g
            v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * g * g
            m_hat = m[i] / (1 - cfg.beta1**t)
            v_hat = v[i] / (1 - cfg.beta2**t)
            theta[i] -= lr * m_hat / (math.sqrt(v_hat) + cfg.eps)
    return theta


def test_the_optimizer_follows_the_adamw_rule_with_the_schedule_and_decay_groups() -> None:
    """Five steps of build_optimizer's AdamW (the fused kernel on CPU), the learning rate set
    from lr_at each step as the trainer does, equal the rule applied by hand."""
    cfg = TrainConfig(
        lr=0.05, min_lr=0.005, warmup_steps=2, max_steps=5, weight_decay=0.1, beta2=0.95
    )
    model = TwoParams()
    start = {name: p.detach().flatten().tolist() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg)
    grads: dict[str, list[list[float]]] = {name: [] for name in start}
    lrs = []
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    for step in range(5):
        lrs.append(lr_at(step, cfg))
        for group in optimizer.param_groups:
            group["lr"] = lrs[-1]
        optimizer.zero_grad()
        (model(x * (step + 1)) ** 2).sum().backward()
        for name, p in model.named_parameters():
            grads[name].append(p.grad.flatten().tolist())
        optimizer.step()
    for name, p in model.named_parameters():
        expected = adamw_by_hand(start[name], grads[name], lrs, cfg, decay=name == "weight")
        got = p.detach().flatten().double()
        torch.testing.assert_close(
            got, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-5
        )


def warmup_cosine_by_hand(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup (step+1)/warmup·lr, then min_lr + ½(1 + cos(π·p))(lr − min_lr) with
    p = (step − warmup)/(total − warmup), and min_lr from `total` on."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (lr - min_lr)


def test_the_schedule_is_linear_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    for step in range(0, 110, 3):
        expected = warmup_cosine_by_hand(step, 1e-3, 1e-4, 10, 100)
        assert math.isclose(lr_at(step, cfg), expected, rel_tol=1e-12), step
    linear = dataclasses.replace(cfg, schedule="linear")
    assert not math.isclose(lr_at(40, linear), lr_at(40, cfg))  # the key chooses the shape


def test_clipping_scales_every_gradient_by_c_over_the_global_norm() -> None:
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clip_gradients(params, 1.0, torch.tensor(5.0))
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(p.grad, g * min(1.0, 1.0 / 5.0))
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clip_gradients(params, 10.0, torch.tensor(5.0))  # below the threshold: untouched
    clip_gradients(params, 0.0, torch.tensor(5.0))  # 0: clipping off
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(p.grad, g)
