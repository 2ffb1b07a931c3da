"""Multi-head (optionally grouped-query) causal self-attention through SDPA, and a KV cache."""

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.model.layers import apply_rope


class KVCache:
    """Keys and values of past positions, preallocated per layer so decoding never reallocates."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0  # positions filled; advanced by the model after the last layer
        # Padding bookkeeping, allocated on first use (left-padded batches only):
        self.real: torch.Tensor | None = None  # (B, max_len) bool, True where a key is a token
        self.seen: torch.Tensor | None = None  # (B,) real tokens so far = next position id

    @property
    def padded(self) -> bool:
        return self.real is not None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, Hkv, T, D) and return all keys and values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} requested")
        self.keys[layer][:, :, self.pos : end] = k
        self.values[layer][:, :, self.pos : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def track_padding(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record which new positions (B, T) are real tokens.

        Returns each new token's position id (B, T), counting real tokens only, so a row's
        positions do not depend on how much padding it got, and the real-key mask (B, pos + T).
        """
        batch, max_len = self.keys[0].shape[0], self.max_len
        if self.real is None:  # everything cached so far was unpadded
            self.real = torch.ones(batch, max_len, dtype=torch.bool, device=real.device)
            self.seen = torch.full((batch,), self.pos, dtype=torch.long, device=real.device)
        end = self.pos + real.shape[1]
        self.real[:, self.pos : end] = real
        positions = (self.seen[:, None] + real.cumsum(dim=1) - 1).clamp(min=0)
        self.seen += real.sum(dim=1)
        return positions, self.real[:, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cached rows `rows` (B',) in that order, e.g. the surviving beams."""
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                store[layer] = tensor.index_select(0, rows)
        if self.real is not None and self.seen is not None:
            self.real, self.seen = self.real.index_select(0, rows), self.seen.index_select(0, rows)

    def reset(self) -> None:
        """Forget every position (the buffers are kept and overwritten)."""
        self.pos, self.real, self.seen = 0, None, None


def padding_mask(real_keys: torch.Tensor, t_q: int, causal: bool) -> torch.Tensor:
    """Where each query may attend (B, 1, Tq, Tk): real keys, not in its future when causal.

    Queries are the last t_q key positions. Every query also sees its own position, so a row of
    padding is never left with nothing to attend (softmax over nothing is NaN, and NaN in a
    padded value row would leak into real rows through 0 · NaN).
    """
    t_k = real_keys.shape[1]
    q_pos = torch.arange(t_k - t_q, t_k, device=real_keys.device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(t_k, device=real_keys.device)[None, :]  # (1, Tk)
    allowed = real_keys[:, None, None, :]  # (B, 1, 1, Tk)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    return allowed | (k_pos == q_pos)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(QKᵀ/√d_k + causal mask)·V, with queries aligned to the last positions of k and v."""
    t_q, t_k = q.shape[2], k.shape[2]
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    if t_q == t_k:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, **gqa)
    if t_q == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **gqa)
    mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **gqa)


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q·Kᵀ/√d_k)·V for one query per row (B, H, 1, D), as in decoding.

    Two small matmuls: at this size the setup of SDPA's fused kernel costs more than the math.
    Grouped-query heads are folded into the query dimension instead of repeating k and v.
    """
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(B, kv_heads, H // kv_heads, D)  # (B, Hkv, G, D): head h reads kv head h // G
    scores = (q @ k.transpose(-2, -1)) * D**-0.5  # (B, Hkv, G, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # mask (B, 1, 1, Tk)
    return (scores.softmax(dim=-1) @ v).reshape(B, H, 1, D)


class Attention(nn.Module):
    """qkv projection -> (RoPE) -> SDPA, causal or bidirectional -> output projection."""

    def __init__(self, cfg: ModelConfig, layer: int, causal: bool = True) -> None:
        super().__init__()
        self.layer, self.causal = layer, causal
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv_width = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, qkv_width, bias=cfg.bias or cfg.qkv_bias)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each query and key head, before the rotation
            self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.ln_eps)
            self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.ln_eps)
        self.proj = nn.Linear(cfg.attn_width, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_projection = True
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C); mask (B, 1, T, Tk) bool from padding_mask, or None for no padding."""
        B, T, _ = x.shape
        heads, kv_heads, D = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(B, T, heads + 2 * kv_heads, D)  # (B, T, H + 2 Hkv, D)
        if hasattr(self, "q_norm"):
            q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
            qkv = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if rope is not None:
            qkv = apply_rope(qkv, rope)  # rotations per head: q and k turn, v stays
        q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if T == 1 and dropout == 0.0 and k.shape[2] > 1:  # decoding one token
            y = single_query_attention(q, k, v, mask)
        elif mask is None and self.causal:
            y = causal_attention(q, k, v, dropout)
        else:
            gqa = {"enable_gqa": True} if heads != kv_heads else {}
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, **gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, heads * D)  # (B, T, H·D)
        return self.resid_dropout(self.proj(y))
