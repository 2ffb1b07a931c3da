"""Inference with linear layers on oneDNN's packed weights: the same maths, read faster.

Decoding one token multiplies each weight matrix by a single vector, so its speed is the speed
at which the weights stream from memory. `F.linear` reads a row-major (out, in) matrix through
the BLAS matrix-vector routine; oneDNN first reorders ("packs") a copy of the weight into the
blocked layout its kernels read best and then runs the same fp32 products (outputs agree to
~1e-6). Measured on a 2-core AMD EPYC with AVX-512, GPT-2-small shape, batch 1: the weights
stream at ~42 GB/s instead of ~18 (docs/benchmarks.md). The packed copy costs one more weight's
worth of memory while it lives. bf16 weights are packed too: on a Xeon with AMX a packed bf16
matrix-vector product streams ~45-58 GB/s where the plain bf16 one reaches ~28.

Calling a oneDNN primitive costs ~13 us whatever its size, while the BLAS product of a small
matrix with a few rows takes 2-5 us: a layer takes the packed path only where the work is big
enough to repay that (see _worth_packing; measured on the same machine, docs/benchmarks.md).
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def packing_available() -> bool:
    """Whether this PyTorch build has oneDNN with the packed-linear operators."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018  (raises when the op is missing)
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def bf16_packing_available() -> bool:
    """Whether oneDNN can pack bf16 weights on this CPU: it needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT; an AVX2-only CPU refuses the reorder."""
    try:
        return packing_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        (isinstance(module, nn.Linear) or getattr(module, "packable", False))
        and weight is not None
        and weight.device.type == "cpu"
        and (
            weight.dtype == torch.float32
            or (weight.dtype == torch.bfloat16 and bf16_packing_available())
        )
    )


PACK_ALWAYS = 384 * 1024  # weight elements: from here packing wins even for one row
PACK_WORK = 1 << 21  # rows x weight elements: from here it wins for any matrix


def _worth_packing(rows: int, weight_elements: int) -> bool:
    """Packed products of a 128x384 weight: 0.22x the BLAS speed for 1 row, 0.58x for 8, 1.8x
    for 1024; of a 1024x384 weight already 1.09x for 1 row (AVX-512 EPYC, 2 threads)."""
    return weight_elements >= PACK_ALWAYS or rows * weight_elements >= PACK_WORK


def _packed_forward(
    module: nn.Linear, packed: torch.Tensor, single_row: bool, x: torch.Tensor
) -> torch.Tensor:
    """y = x Wᵀ + b through oneDNN; the plain path for small products (and for one row where
    the start-up measurement found BLAS faster), when autograd needs a backward or when the
    input is not a CPU fp32 tensor (the packed operator has no gradient)."""
    weight = module.weight
    rows = x.numel() // weight.shape[1]
    if (
        (torch.is_grad_enabled() and weight.requires_grad)
        or x.dtype != weight.dtype
        or not _worth_packing(rows, weight.numel())
        or (rows == 1 and not single_row)
    ):
        return F.linear(x, weight, module.bias)
    return _onednn_linear(x, packed, module.bias, "none", [], "")


def _single_row_pays(linear: nn.Linear, packed: torch.Tensor, repeats: int = 5) -> bool:
    """Whether one-row products (decoding) of this weight's shape run faster packed than
    through BLAS on this CPU: measured, not assumed (on an AVX-512 EPYC packing streams GPT-2's
    weights 2.3x faster; on a Xeon with AMX it loses for mid-sized weights). The two are timed
    alternately, best of `repeats`, once per distinct weight shape."""
    x = torch.randn(1, linear.weight.shape[1], dtype=linear.weight.dtype)
    plain = onednn = float("inf")
    for _ in range(repeats + 1):  # the first round warms both up
        start = time.perf_counter()
        F.linear(x, linear.weight, linear.bias)
        middle = time.perf_counter()
        torch.ops.mkldnn._linear_pointwise(x, packed, linear.bias, "none", [], "")
        end = time.perf_counter()
        plain, onednn = min(plain, middle - start), min(onednn, end - middle)
    return onednn < plain


def _reorder(weight: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """oneDNN's blocked copy of a (out, in) weight."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)


def _onednn_linear(*args: object) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(*args)


PACKED_ATTRIBUTE = "_onednn_packed"  # (weight key, packed copy, one-row verdict) on a module


def _weight_key(weight: torch.Tensor) -> tuple:
    """Changes whenever the weight does: replaced (storage), updated in place (version)."""
    return (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))


def _packed_weight(linear: nn.Module, verdicts: dict[tuple, bool]) -> tuple[torch.Tensor, bool]:
    """The module's packed weight and its one-row verdict: reused from an earlier block while the
    weight is unchanged (a chat or a server generates many times from the same weights), else
    packed and timed anew (the verdict once per shape and dtype)."""
    key = _weight_key(linear.weight)
    cached = getattr(linear, PACKED_ATTRIBUTE, None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    packed = _reorder(linear.weight.detach(), None)
    shape = key[2:]
    if shape not in verdicts:
        verdicts[shape] = _single_row_pays(linear, packed)
    setattr(linear, PACKED_ATTRIBUTE, (key, packed, verdicts[shape]))
    return packed, verdicts[shape]


def release_packed(model: nn.Module) -> None:
    """Drop the packed copies kept on the model's linears (one more weight's worth of memory)."""
    for module in model.modules():
        if hasattr(module, PACKED_ATTRIBUTE):
            delattr(module, PACKED_ATTRIBUTE)


@contextmanager
def packed_linears(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block every CPU fp32 or bf16 nn.Linear of model reads a packed copy of its
    weight; on exit the modules compute as before, and the copies stay on them for the next
    block while their weights are unchanged (`release_packed` frees them). Yields how many were
    packed.

    The weights must not change inside the block (the copies would be stale). Where oneDNN is
    missing, or enabled is False, nothing changes and 0 is yielded.
    """
    # a module patched by an enclosing block keeps its packed weights (and its patch on exit)
    linears = [m for m in model.modules() if _packable(m) and "forward" not in vars(m)]
    linears = linears if enabled else []
    if not linears or not packing_available():
        yield 0
        return
    patched = []
    try:
        with torch.no_grad():
            verdicts: dict[tuple, bool] = {}  # weight shape and dtype -> one row pays packed
            for linear in linears:
                packed, single_row = _packed_weight(linear, verdicts)
                linear.forward = partial(_packed_forward, linear, packed, single_row)
                patched.append(linear)
        yield len(patched)
    finally:
        for linear in patched:
            del linear.forward  # the class's forward shows through again


def decode_seconds(shape: tuple[int, int], dtype: torch.dtype, repeats: int = 10) -> float:
    """Seconds of one decoding-sized product (one row) with a weight of `shape` in `dtype`, on
    oneDNN's packed weight where this build has it: the best of `repeats` after a warm-up."""
    weight = torch.randn(*shape, dtype=dtype)
    x = torch.randn(1, shape[1], dtype=dtype)
    can_pack = bf16_packing_available() if dtype == torch.bfloat16 else packing_available()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, None) if can_pack else None
    best = float("inf")
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        if packed is None:
            F.linear(x, weight)
        else:
            _onednn_linear(x, packed, None, "none", [], "")
        if attempt:
            best = min(best, time.perf_counter() - start)
    return best
