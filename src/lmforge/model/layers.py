"""Building blocks shared by the models: LayerNorm, MLP, rotary positions, initialisation."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig


def layer_norm(cfg: ModelConfig) -> nn.LayerNorm:
    """LayerNorm over the residual width, with or without bias."""
    return nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps, bias=cfg.bias)


class MLP(nn.Module):
    """Position-wise feed-forward: proj(gelu(fc(x))), width n_embd -> 4 n_embd -> n_embd."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_projection = True  # scaled init, see init_weights
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


def rope_cache(
    head_dim: int, max_positions: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angle p·θ^(-2i/d) for every position p and pair i, each (T, head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D): rotate-half layout
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair by its position's angle: x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, H, T, D)
    return x * cos + rotated * sin


def init_weights(module: nn.Module, std: float, n_layer: int) -> None:
    """GPT-2 init: N(0, std), zero biases, residual projections scaled by 1/√(2·n_layer)."""
    if isinstance(module, nn.Linear):
        residual = getattr(module, "is_residual_projection", False)
        scale = 1 / math.sqrt(2 * n_layer) if residual else 1.0
        nn.init.normal_(module.weight, mean=0.0, std=std * scale)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
