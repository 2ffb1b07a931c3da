"""Inference with linear layers on oneDNN's packed weights: the same fp32 maths, read faster.

Decoding one token multiplies each weight matrix by a single vector, so its speed is the speed
at which the weights stream from memory. `F.linear` reads a row-major (out, in) matrix through
the BLAS matrix-vector routine; oneDNN first reorders ("packs") a copy of the weight into the
blocked layout its kernels read best and then runs the same fp32 products (outputs agree to
~1e-6). Measured on a 2-core AMD EPYC with AVX-512, GPT-2-small shape, batch 1: the weights
stream at ~42 GB/s instead of ~18 (docs/benchmarks.md). The packed copy costs one more weight's
worth of memory while it lives.
"""

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


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Linear)
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
    )


def _packed_forward(module: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ + b through oneDNN; the plain path when autograd needs a backward or the input
    is not a CPU fp32 tensor (the packed operator has no gradient)."""
    if (torch.is_grad_enabled() and module.weight.requires_grad) or x.dtype != torch.float32:
        return F.linear(x, module.weight, module.bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")


@contextmanager
def packed_linears(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block every CPU fp32 nn.Linear of model reads a packed copy of its weight;
    on exit the copies are dropped and the modules are as before. Yields how many were packed.

    The weights must not change inside the block (the copies would be stale). Where oneDNN is
    missing, or enabled is False, nothing changes and 0 is yielded.
    """
    linears = [m for m in model.modules() if _packable(m)] if enabled else []
    if not linears or not packing_available():
        yield 0
        return
    patched = []
    try:
        with torch.no_grad():
            for linear in linears:
                packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
                linear.forward = partial(_packed_forward, linear, packed)
                patched.append(linear)
        yield len(patched)
    finally:
        for linear in patched:
            del linear.forward  # the class's forward shows through again
