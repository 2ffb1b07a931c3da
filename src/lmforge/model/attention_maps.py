"""The attention probabilities of every head, as the model used them: what `lmforge inspect
attention` draws.

SDPA never materialises the probabilities, so each attention module's inputs are recorded with
a forward pre-hook during one ordinary forward pass, and the probabilities are computed again
from them with the module's own projection, q/k norms and rotary rotation.
"""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmforge.errors import LMForgeError
from lmforge.model.attention import Attention
from lmforge.model.layers import apply_rope


def attention_modules(model: nn.Module) -> list[Attention]:
    """The model's attention modules, first layer first; an error if it has none of lmforge's."""
    found = sorted((m for m in model.modules() if isinstance(m, Attention)), key=lambda m: m.layer)
    if not found:
        raise LMForgeError(
            f"{type(model).__name__} has no lmforge attention layers; attention maps need a GPT "
            "or BERT built by lmforge"
        )
    return found


def queries_and_keys(
    module: Attention, x: torch.Tensor, rope: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries (B, H, T, D) and keys (B, H, T, D) of x (B, T, C), as the module makes them:
    fused qkv projection, RMSNorm per head (qk_norm), then the rotary rotation. Grouped-query
    keys are repeated so that query head h reads kv head h // (H / H_kv), as SDPA's enable_gqa
    and the decoding path share them."""
    B, T, _ = x.shape
    heads, kv_heads, D = module.n_head, module.n_kv_head, module.head_dim
    qkv = module.qkv(x).view(B, T, heads + 2 * kv_heads, D)
    if hasattr(module, "q_norm"):
        q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
        qkv = torch.cat([module.q_norm(q), module.k_norm(k), v], dim=2)
    if rope is not None:
        qkv = apply_rope(qkv, rope)
    q, k, _ = qkv.split([heads, kv_heads, kv_heads], dim=2)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H | Hkv, T, D)
    return q, k.repeat_interleave(heads // kv_heads, dim=1)


def attention_probabilities(
    module: Attention,
    x: torch.Tensor,
    rope: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """P = softmax(Q·Kᵀ/√d_k + M) (B, H, T, T) for the module's input x (B, T, C).

    M is −∞ where a query may not look: keys after it for a causal module, and keys outside
    `mask` (B, 1, T, T; True = allowed), the padding mask the model passed, when given. Rows sum
    to 1; P·V through the output projection is the module's output (in eval mode, without
    attention dropout). Computed in float32 whatever the weights' dtype.
    """
    q, k = queries_and_keys(module, x, rope)
    scores = (q.float() @ k.float().transpose(-2, -1)) * module.head_dim**-0.5  # (B, H, T, T)
    T = x.shape[1]
    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device)
    if module.causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & mask.to(device=x.device, dtype=torch.bool)
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def _attention_inputs(module: Attention, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of one Attention.forward call, by name, defaults filled in."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


@contextmanager
def recording_attention(model: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, each forward pass of `model` fills the yielded dict: layer index ->
    attention probabilities (B, H, T, T) of that layer (see attention_probabilities)."""
    maps: dict[int, torch.Tensor] = {}

    def record(module: Attention, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs = _attention_inputs(module, args, kwargs)
        if inputs.get("kv_cache") is not None:
            raise LMForgeError("attention maps need a whole sequence at once, not a KV cache")
        with torch.no_grad():
            maps[module.layer] = attention_probabilities(
                module, inputs["x"], inputs.get("rope"), inputs.get("mask")
            )

    hooks = [
        module.register_forward_pre_hook(record, with_kwargs=True)
        for module in attention_modules(model)
    ]
    try:
        yield maps
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def attention_maps(model: nn.Module, idx: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
    """Attention probabilities (n_layer, n_head, T, T) of one sequence idx (T,) or (1, T), from
    one ordinary forward pass of a GPT or BERT (put it in eval mode first); forward_kwargs go to
    the model (e.g. BERT's token_types)."""
    if idx.dim() == 1:
        idx = idx[None]
    if idx.shape[0] != 1:
        raise LMForgeError(f"attention maps are drawn for one sequence; got a batch of {len(idx)}")
    with recording_attention(model) as maps:
        model(idx, **forward_kwargs)
    return torch.stack([maps[layer][0] for layer in sorted(maps)])
