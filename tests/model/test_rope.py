"""Rotary position embedding against its formula, computed by hand in float64.

Pair i of a head of width d turns at frequency θ_i = base^(−2i/d), i = 0 .. d/2 − 1; at position
p the pair (x_2i, x_2i+1) — adjacent components, our layout (not the half-split one) — becomes
(x_2i cos pθ_i − x_2i+1 sin pθ_i, x_2i sin pθ_i + x_2i+1 cos pθ_i). Queries and keys turn,
values do not, so q_m · k_n depends on m − n only.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.model import GPT
from lmforge.model.layers import apply_rope, rope_cache

D, T = 8, 16


def _angles(head_dim: int, positions: int, base: float) -> torch.Tensor:
    """p · base^(−2i/d) for p < positions and i < d/2: float64 (positions, d/2)."""
    freqs = [base ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    return torch.tensor([[p * f for f in freqs] for p in range(positions)], dtype=torch.float64)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """The adjacent pairs of x (B, T, N, D) turned by angles (T, D/2), in float64."""
    x = x.double()
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def test_frequencies_are_base_to_the_minus_2i_over_d() -> None:
    """d = 8, base = 10^4: θ = 1, 0.1, 0.01, 0.001 (base^(−i/d) would give 1, 0.316, ...)."""
    at_one = rope_cache(D, T, 10000.0)[1].angle().double()  # position 1: the angles are θ_i
    expected = torch.tensor([1, 0.1, 0.01, 1e-3], dtype=torch.float64)
    torch.testing.assert_close(at_one, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_cache_is_e_to_the_i_p_theta(base: float) -> None:
    rotations = rope_cache(D, T, base)
    angles = _angles(D, T, base)
    assert rotations.shape == (T, D // 2)
    torch.testing.assert_close(rotations.real.double(), angles.cos(), atol=2e-6, rtol=0)
    torch.testing.assert_close(rotations.imag.double(), angles.sin(), atol=2e-6, rtol=0)


def test_apply_rope_turns_adjacent_pairs_by_hand() -> None:
    x = torch.randn(2, T, 3, D, generator=torch.Generator().manual_seed(0))
    got = apply_rope(x, rope_cache(D, T, 500.0))
    expected = _rotate(x, _angles(D, T, 500.0))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def _rope_gpt() -> GPT:
    """A RoPE GPT with a non-default base and grouped-query attention (4 query, 2 kv heads)."""
    cfg = ModelConfig(
        n_layer=1, n_head=4, n_kv_head=2, n_embd=32, block_size=T, vocab_size=29,
        pos_emb="rope", rope_theta=500.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT(cfg).eval()


def test_the_models_table_turns_queries_and_keys_at_its_base_and_leaves_values() -> None:
    model = _rope_gpt()
    table = model.rope_rotations  # (T, H + 2 Hkv, D/2): 4 q heads, 2 k heads, 2 v heads
    angles = _angles(D, T, 500.0)
    assert table.shape == (T, 8, D // 2)
    for head in range(6):
        torch.testing.assert_close(table[:, head].real.double(), angles.cos(), atol=2e-6, rtol=0)
        torch.testing.assert_close(table[:, head].imag.double(), angles.sin(), atol=2e-6, rtol=0)
    assert torch.equal(table[:, 6:], torch.ones_like(table[:, 6:]))


def _attention_by_hand(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """proj(softmax(q_rot k_rotᵀ / √d + causal mask) v) in float64, q head h reading kv head
    h // 2, with q and k turned by _rotate at base 500."""
    attn = model.blocks[0].attn
    B = x.shape[0]
    qkv = x.double() @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    q, k, v = qkv.view(B, T, 8, D).split([4, 2, 2], dim=2)
    angles = _angles(D, T, 500.0)
    q, k = _rotate(q, angles), _rotate(k, angles)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    y = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v
    y = y.transpose(1, 2).reshape(B, T, 4 * D)
    return y @ attn.proj.weight.double().T + attn.proj.bias.double()


def test_attention_with_rope_matches_the_formula() -> None:
    model = _rope_gpt()
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(1))
    rope = model.rope_rotations[torch.arange(T)]
    with torch.no_grad():
        got = model.blocks[0].attn(x, rope)
    torch.testing.assert_close(got.double(), _attention_by_hand(model, x), atol=1e-5, rtol=1e-4)


def test_query_key_products_depend_only_on_the_offset() -> None:
    """q_m · k_n = Σ_i Re(q̃_i conj(k̃_i) e^(i(m − n)θ_i)): a function of m − n alone."""
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
    turned_q = apply_rope(q.expand(1, T, 1, D), rope_cache(D, T, 500.0))[0, :, 0]  # (T, D)
    turned_k = apply_rope(k.expand(1, T, 1, D), rope_cache(D, T, 500.0))[0, :, 0]
    scores = turned_q @ turned_k.T  # scores[m, n] = q_m · k_n
    for offset in (0, 3, 7):
        diagonal = scores.diagonal(-offset)  # every (m, m − offset)
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5, rtol=0)
    assert not torch.isclose(scores[3, 0], scores[7, 0], atol=1e-3)
