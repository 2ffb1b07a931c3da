"""LoRA (Hu et al. 2021): train a low-rank update B·A beside a frozen weight W.

y = x Wᵀ + b + (α / r) · dropout(x) Aᵀ Bᵀ, with A (r, in) Kaiming-uniform and B (out, r) = 0,
so a fresh adapter changes nothing and only r · (in + out) numbers per layer learn. Merging
adds (α / r) · B A into W (the adapter then costs nothing at inference); unmerging subtracts it.
"""

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError

# Short names for the layers of our blocks; anything else is matched against module names.
TARGET_ALIASES = {
    "q": "attn.qkv",  # our q, k and v share one fused matrix: any of them adapts it whole
    "k": "attn.qkv",
    "v": "attn.qkv",
    "qkv": "attn.qkv",
    "o": "attn.proj",
    "fc": "mlp.fc",
    "up": "mlp.fc",
    "down": "mlp.proj",
    "mlp": "mlp.*",
}


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (state-dict names: base.*, lora_A,
    lora_B)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta(self) -> torch.Tensor:
        """The weight update (α / r) · B A, shaped like W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the nn.Linear modules that the target names or patterns select.

    A target is an alias (q, k, v, o, fc, down, mlp), a module-name suffix such as attn.qkv, or
    an fnmatch pattern such as blocks.*.mlp.fc; none matching is a user error naming what exists.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen: list[str] = []
    for target in targets:
        pattern = TARGET_ALIASES.get(target, target)
        found = [n for n in linears if fnmatch.fnmatch(n, pattern) or _ends_with(n, pattern)]
        if not found:
            suffixes = sorted(
                {n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in linears}
            )
            raise ConfigError(
                f"LoRA target {target!r} matches no linear layer; choose from the aliases "
                f"{sorted(TARGET_ALIASES)} or these layers: {suffixes}"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def _ends_with(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatch(name, "*." + pattern)


def add_lora(
    model: nn.Module,
    targets: list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    train_modules: tuple[str, ...] = (),
) -> list[str]:
    """Wrap the target linear layers in LoRALinear and freeze everything else, except modules
    whose names match a pattern of train_modules (task heads); returns the wrapped names."""
    if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise ConfigError(
            f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1); got {r}, {alpha}, {dropout}"
        )
    names = resolve_targets(model, targets)
    model.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, LoRALinear(getattr(holder, child), r, alpha, dropout))
    for name, module in model.named_modules():
        if any(fnmatch.fnmatch(name, pattern) for pattern in train_modules):
            module.requires_grad_(True)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what the adapter run owns: every trainable tensor (LoRA A/B and task heads)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain nn.Linear layers back."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, layer.base.requires_grad_(True))
    return model


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), tied tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total
