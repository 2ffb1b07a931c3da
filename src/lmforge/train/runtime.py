"""Device and precision choices, autocast, and seeding."""

import contextlib
import ctypes
import logging
import sys

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
    """bf16 or fp16 autocast when asked for (weights stay fp32); a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def warn_if_slow(device: torch.device, dtype: str) -> None:
    """Half precision on a CPU is emulated on most chips: say so once, before training."""
    if dtype != "float32" and device.type == "cpu":
        log.warning("%s on a CPU may be far slower than float32 (no native units on most)", dtype)


def grad_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow: scale the loss up, unscale before clipping, skip overflowing
    steps and adapt the scale (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if dtype == "float16" else None


def compile_blocks(model: torch.nn.Module) -> None:
    """torch.compile each block in place: identical blocks share one compiled graph, parameter
    names stay as they are, and FSDP can still shard block by block."""
    for block in model.blocks:
        block.compile()


def seed_everything(seed: int) -> None:
    """Seed PyTorch's default generators (weight init and dropout draw from them)."""
    torch.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step frees and re-allocates the same activation buffers. With glibc's defaults
    large buffers (the logits, 33 MB in the demo) are mmapped fresh and the freed top of the
    heap is trimmed, so every step page-faults them back in: ~24,000 faults per demo step.
    Serving everything from a heap that is never trimmed removes them. Process RSS then stays
    at its peak. Returns False where glibc is not in use.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_TRIM_THRESHOLD, 1 << 40), (_M_TOP_PAD, 64 << 20), (_M_MMAP_MAX, 0))
    return all(mallopt(param, value) == 1 for param, value in settings)
