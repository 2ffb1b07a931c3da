"""Device and precision choices, autocast, and seeding."""

import contextlib
import logging

import torch

from lmforge.errors import ConfigError

log = logging.getLogger(__name__)


def choose_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; an explicit CUDA request without CUDA fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (weights stay fp32); a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        log.warning("bfloat16 on this CPU may be far slower than float32 (no native bf16 units)")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    """Seed PyTorch's default generators (weight init and dropout draw from them)."""
    torch.manual_seed(seed)
