"""Device and precision choices, autocast, and seeding."""

import contextlib
import ctypes
import logging
import sys
import time
from collections.abc import Callable

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
    if dtype == "auto":
        raise ConfigError("train.dtype=auto is resolved by the training session (jobs/session.py)")
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def precision_speeds(width: int, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of a training-shaped product, forward and backward, in fp32 and under bf16
    autocast: a (512, width) batch through a (width, 4·width) weight, the best of `repeats`
    after a warm-up, the two timed alternately."""
    x = torch.randn(512, width, requires_grad=True)
    weight = torch.randn(4 * width, width, requires_grad=True)
    flops = 3 * 2 * 512 * width * 4 * width  # forward, and the two products of the backward
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    for attempt in range(repeats + 1):
        for dtype in best:
            start = time.perf_counter()
            with autocast(torch.device("cpu"), dtype):
                torch.nn.functional.linear(x, weight).sum().backward()
            if attempt:
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: flops / seconds / 1e9 for dtype, seconds in best.items()}


def choose_precision(
    device: torch.device, width: int, measure: Callable[[int], dict[str, float]] | None = None
) -> tuple[str, dict[str, float]]:
    """train.dtype=auto: bfloat16 autocast where it measured at least 10% faster than float32
    (CPUs with AMX or avx512_bf16), else float32 (CPUs that emulate bf16 are ~100x slower); on
    CUDA, bfloat16 where the GPU supports it. Returns the choice and the measured GFLOP/s."""
    if device.type == "cuda":
        choice = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return choice, {}
    speeds = (measure or precision_speeds)(width)
    choice = "bfloat16" if speeds["bfloat16"] > 1.1 * speeds["float32"] else "float32"
    return choice, speeds


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
