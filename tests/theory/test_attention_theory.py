"""Scaled dot-product, multi-head and grouped-query attention against their formulas, written
out slowly in float64: Attention(Q, K, V) = softmax(QKᵀ/√d_k + M)·V, where d_k is the width of
one head and M is 0 where a query may look and −∞ where it may not.

The fast paths (PyTorch's fused SDPA, the two-matmul single-query decode, the fused qkv
projection) are proven equal to these transcriptions; the transcriptions are the reference.
"""

import math

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.model.attention import (
    Attention,
    causal_attention,
    padding_mask,
    single_query_attention,
)


def softmax_by_hand(scores: list[float]) -> list[float]:
    """softmax(s)_j = e^(s_j − max s) / Σ_k e^(s_k − max s); −inf entries get weight 0."""
    top = max(scores)
    exps = [math.exp(s - top) if s != float("-inf") else 0.0 for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def attention_by_hand(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """One head, loops only: out_i = Σ_j softmax_j(q_i·k_j / √d_k, masked)·v_j.

    q (Tq, d_k), k and v (Tk, d_k); allowed (Tq, Tk) True where query i may attend to key j.
    """
    d_k = q.shape[-1]
    out = torch.zeros(q.shape[0], v.shape[-1], dtype=torch.float64)
    for i in range(q.shape[0]):
        scores = []
        for j in range(k.shape[0]):
            dot = sum(float(q[i, c]) * float(k[j, c]) for c in range(d_k))
            scores.append(dot / math.sqrt(d_k) if allowed[i, j] else float("-inf"))
        weights = softmax_by_hand(scores)
        for j, w in enumerate(weights):
            out[i] += w * v[j].double()
    return out


def _qkv(heads: int, kv_heads: int, t_q: int, t_k: int, d: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, t_q, d, generator=g)
    k = torch.randn(2, kv_heads, t_k, d, generator=g)
    v = torch.randn(2, kv_heads, t_k, d, generator=g)
    return q, k, v


def _causal(t_q: int, t_k: int) -> torch.Tensor:
    """Query i (the (t_k − t_q + i)-th position) sees keys up to and including its own."""
    return torch.ones(t_q, t_k, dtype=torch.bool).tril(diagonal=t_k - t_q)


def _by_hand_all_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """Every (row, head) by hand; grouped-query head h reads kv head h // (H / Hkv)."""
    B, H, t_q, d = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, H, t_q, d, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            mask = allowed[b] if allowed.dim() == 3 else allowed
            out[b, h] = attention_by_hand(q[b, h], k[b, h // group], v[b, h // group], mask)
    return out


@pytest.mark.parametrize(
    ("heads", "kv_heads", "t_q", "t_k"),
    [(2, 2, 5, 5), (4, 2, 5, 5), (4, 1, 3, 7), (2, 2, 2, 6)],
)
def test_causal_attention_is_softmax_of_scaled_scores_times_values(
    heads: int, kv_heads: int, t_q: int, t_k: int
) -> None:
    """SDPA (training, prefill, and queries continuing a cache) equals the transcription."""
    q, k, v = _qkv(heads, kv_heads, t_q, t_k, 4, seed=heads + t_k)
    got = causal_attention(q, k, v)
    expected = _by_hand_all_heads(q, k, v, _causal(t_q, t_k))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (4, 1)])
def test_one_decoded_query_over_a_padded_cache_matches_the_formula(
    heads: int, kv_heads: int
) -> None:
    """The decode fast path: one query, keys of which some are padding (masked to −∞)."""
    q, k, v = _qkv(heads, kv_heads, 1, 6, 8, seed=3)
    real = torch.tensor([[False, True, True, True, True, True], [True] * 6])
    mask = padding_mask(real, 1, causal=True)  # (B, 1, 1, Tk)
    got = single_query_attention(q, k, v, mask)
    expected = _by_hand_all_heads(q, k, v, mask[:, 0])
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_the_scale_is_the_head_width_not_the_model_width() -> None:
    """Dividing by √d_model instead of √d_k (a mistake of the seeds' samples) gives other
    weights: here with 4 heads the scores are 2x too small and the softmax is flatter."""
    q, k, v = _qkv(4, 4, 6, 6, 8, seed=4)
    right = causal_attention(q, k, v)
    d_model = 4 * 8
    too_flat = causal_attention(q * math.sqrt(8 / d_model), k, v)  # scores / √d_model
    assert not torch.allclose(right, too_flat, atol=1e-3)


def multi_head_by_hand(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """MultiHead(X) = Concat(head_1 … head_h)·W_O + b_O, head_i = Attention(XW_Q^i, XW_K^i,
    XW_V^i), causal, each head's projections sliced out of the fused qkv weight by hand."""
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    W, b = attn.qkv.weight.detach().double(), attn.qkv.bias.detach().double()
    q_rows, k_rows = H * D, Hkv * D
    heads = []
    for row in x.double():
        outputs = []
        for h in range(H):
            g = h // (H // Hkv)
            rows_q = slice(h * D, (h + 1) * D)
            rows_k = slice(q_rows + g * D, q_rows + (g + 1) * D)
            rows_v = slice(q_rows + k_rows + g * D, q_rows + k_rows + (g + 1) * D)
            wq, bq, wk, bk = W[rows_q], b[rows_q], W[rows_k], b[rows_k]
            wv, bv = W[rows_v], b[rows_v]
            q, k, v = row @ wq.T + bq, row @ wk.T + bk, row @ wv.T + bv
            outputs.append(attention_by_hand(q, k, v, _causal(len(row), len(row))))
        heads.append(torch.cat(outputs, dim=-1))
    concat = torch.stack(heads)  # (B, T, H·D)
    return concat @ attn.proj.weight.detach().double().T + attn.proj.bias.detach().double()


@pytest.mark.parametrize("kv_heads", [0, 2, 1])
def test_the_attention_module_is_concatenated_heads_times_w_o(kv_heads: int) -> None:
    """The module (fused qkv, heads split by view, SDPA) equals per-head attention by hand,
    for multi-head (kv_heads 0 = n_head) and grouped-query attention."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=4, n_kv_head=kv_heads, n_embd=16, vocab_size=11)
    attn = Attention(cfg, layer=0).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = attn(x)
    torch.testing.assert_close(got.double(), multi_head_by_hand(attn, x), atol=1e-5, rtol=1e-5)
