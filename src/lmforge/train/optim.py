"""The optimizer (AdamW with decay/no-decay groups, or Muon + AdamW) and the warmup +
cosine/linear/wsd learning-rate schedule."""

import math
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.train.muon import Muon, MuonWithAdamW, split_for_muon
from lmforge.train.runtime import choose_muon_precision


def param_groups(
    model: nn.Module, weight_decay: float, params: list[torch.Tensor] | None = None
) -> list[dict[str, Any]]:
    """Decay matrices (Linear and Embedding weights); never biases or LayerNorm gains (1-D).
    params: a subset of the model's trainable parameters (default: all of them)."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """train.optimizer=adamw: AdamW, θ ← θ − lr·(m̂/(√v̂ + ε) + λθ), on every parameter, the
    fused kernel where PyTorch has one for the device. muon: Muon on the blocks' matrices (at
    muon_lr, momentum muon_momentum), AdamW on the rest; Newton-Schulz in train.muon_dtype."""
    if cfg.optimizer == "muon":
        matrices, others = split_for_muon(model)
        precision = cfg.muon_dtype
        if precision == "auto":  # the session resolves it first; an optimizer built alone, here
            width = matrices[0].shape[-1] if matrices else 1
            precision = (
                choose_muon_precision(matrices[0].device, width)[0] if matrices else "float32"
            )
        ns_dtype = getattr(torch, precision)
        muon = Muon(
            [{"params": matrices, "lr_ratio": cfg.muon_lr / cfg.lr}],
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            weight_decay=cfg.weight_decay,
            ns_dtype=ns_dtype,
        )
        return MuonWithAdamW(
            _adamw(param_groups(model, cfg.weight_decay, others), model, cfg), muon
        )
    return _adamw(param_groups(model, cfg.weight_decay), model, cfg)


def _adamw(groups: list[dict[str, Any]], model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
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
