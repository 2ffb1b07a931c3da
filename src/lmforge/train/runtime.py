"""Device and precision choices, autocast, and seeding."""

import contextlib
import ctypes
import logging
import sys
import time
from collections.abc import Callable

import torch

from lmforge.errors import ConfigError
from lmforge.train.muon import orthogonalize

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


def model_speeds(
    model: torch.nn.Module, rows: int, length: int, repeats: int = 2
) -> dict[str, float]:
    """Tokens/s of the model's own training pass (forward and backward on random tokens of
    shape (rows, length)) in fp32 and under bf16 autocast: the best of `repeats` after a
    warm-up, the two timed alternately. At small widths the casts around each product can cost
    more than bf16 saves, which a lone matmul does not show. The model's gradients are dropped."""
    vocab = model.cfg.vocab_size
    tokens = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    for attempt in range(repeats + 1):
        for dtype in best:
            start = time.perf_counter()
            with autocast(torch.device("cpu"), dtype):
                out = model(tokens)
                parts = out if isinstance(out, tuple) else (out,)
                loss = sum(part.float().mean() for part in parts)
            loss.backward()
            if attempt:
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return {dtype: rows * length / seconds for dtype, seconds in best.items()}


def choose_precision(
    device: torch.device, width: int, measure: Callable[[int], dict[str, float]] | None = None
) -> tuple[str, dict[str, float]]:
    """train.dtype=auto: bfloat16 autocast where it measured at least 10% faster than float32
    (CPUs with AMX or avx512_bf16), else float32 (CPUs that emulate bf16 are ~100x slower); on
    CUDA, bfloat16 where the GPU supports it. measure(width) gives each dtype's speed (default:
    a training-shaped product's GFLOP/s). Returns the choice and the measured speeds."""
    if device.type == "cuda":
        choice = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return choice, {}
    speeds = (measure or precision_speeds)(width)
    choice = "bfloat16" if speeds["bfloat16"] > 1.1 * speeds["float32"] else "float32"
    return choice, speeds


def newton_schulz_seconds(width: int, repeats: int = 3) -> dict[str, float]:
    """Seconds of Muon's Newton-Schulz on a stack of four (width, 4·width) matrices, in float32
    and in bfloat16: the best of `repeats` after a warm-up, the two timed alternately."""
    stack = torch.randn(4, width, 4 * width)
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    for attempt in range(repeats + 1):
        for dtype in best:
            start = time.perf_counter()
            orthogonalize(stack, dtype=getattr(torch, dtype))
            if attempt:
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best


def choose_muon_precision(
    device: torch.device, width: int, measure: Callable[[int], dict[str, float]] | None = None
) -> tuple[str, dict[str, float]]:
    """train.muon_dtype=auto: bfloat16 Newton-Schulz where it measured at least 10% faster (on
    CUDA always, as PyTorch's own Muon), else float32. Returns the choice and the seconds."""
    if device.type == "cuda":
        return "bfloat16", {}
    seconds = (measure or newton_schulz_seconds)(width)
    choice = "bfloat16" if seconds["bfloat16"] * 1.1 < seconds["float32"] else "float32"
    return choice, seconds


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
