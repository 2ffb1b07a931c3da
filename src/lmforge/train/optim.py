"""AdamW with decay/no-decay parameter groups, and the warmup + cosine/linear/wsd lr schedule."""

import math
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (Linear and Embedding weights); never biases or LayerNorm gains (1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW: θ ← θ − lr·(m̂/(√v̂ + ε) + λθ), fused kernel where PyTorch has one for the device."""
    groups = param_groups(model, cfg.weight_decay)
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, then decay to min_lr at max_steps.

    With progress p in [0, 1] after warmup: cosine gives min_lr + (1 + cos πp)/2 · (lr - min_lr),
    linear (BERT fine-tuning) gives min_lr + (1 - p) · (lr - min_lr), and wsd
    (warmup-stable-decay) holds lr until p = 1 - f, then decays linearly to min_lr at p = 1
    (f = decay_fraction): lr + (min_lr - lr) · max(0, p - (1 - f)) / f.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return cfg.min_lr + (1.0 - progress) * (cfg.lr - cfg.min_lr)
    if cfg.schedule == "wsd":
        decayed = max(0.0, progress - (1.0 - cfg.decay_fraction)) / cfg.decay_fraction
        return cfg.lr + (cfg.min_lr - cfg.lr) * decayed
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
