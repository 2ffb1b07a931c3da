"""GPT: a decoder-only Transformer language model, pre-norm: GPT-2 (Radford et al. 2019) and,
through model.* keys, the Llama family (RMSNorm, SwiGLU, rotary positions, grouped-query
attention; Qwen2's q/k/v biases, Qwen3's q/k norm, Llama 3's RoPE scaling)."""

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model.attention import Attention, KVCache, padding_mask
from lmforge.model.fused_head import linear_cross_entropy
from lmforge.model.layers import (
    MLP,
    init_weights,
    layer_norm,
    rope_cache,
    rope_table,
    run_block,
    sinusoidal_positions,
)


class Block(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = layer_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.ln_2 = layer_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None,
        kv_cache: KVCache | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache, mask)
        return x + self.mlp(self.ln_2(x))


def packed_positions_and_mask(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows of packed examples (segments (B, T): 1, 1, 2, 2, 2, 0 ...): each token's position
    within its example (B, T) and the mask (B, 1, T, T) of earlier tokens of the same example."""
    T = segments.shape[1]
    index = torch.arange(T, device=segments.device)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values  # start of each token's example
    same = segments[:, :, None] == segments[:, None, :]  # (B, Tq, Tk)
    causal = index[None, :, None] >= index[None, None, :]
    mask = (same & causal & (segments[:, None, :] > 0)) | torch.eye(
        T, dtype=torch.bool, device=segments.device
    )
    return index - first, mask[:, None]


def embed_with_sinusoids(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x = √C · E[token] + PE[position], as the original Transformer adds them (§3.4: the
    embedding is scaled by √d_model so the fixed ±1 sinusoids do not drown it)."""
    return tokens * tokens.shape[-1] ** 0.5 + positions.to(tokens.dtype)


class GPT(nn.Module):
    """Token (+ position) embedding -> Block × n_layer -> ln_f -> lm_head; returns logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise LMForgeError("model.vocab_size must be set (> 0) before building a GPT")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = (
            nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.activation_checkpointing = False  # recompute each block in training's backward
        self.ln_f = layer_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos_emb == "rope":
            rotations = rope_cache(cfg.head_dim, cfg.block_size, cfg.rope_theta, cfg.rope_scaling)
            table = rope_table(rotations, cfg.n_head, cfg.kv_heads)  # (T, H + 2 Hkv, D/2)
            self.register_buffer("rope_rotations", table, persistent=False)
        if cfg.pos_emb == "sincos":
            sincos = sinusoidal_positions(cfg.block_size, cfg.n_embd)  # (T, C), fixed
            self.register_buffer("sincos_positions", sincos, persistent=False)
        self.apply(lambda m: init_weights(m, cfg.init_std, cfg.n_layer))
        if cfg.zero_init_proj:  # the modded-nanoGPT speedrun's start: blocks begin as identity
            for block in self.blocks:
                nn.init.zeros_(block.attn.proj.weight)
                nn.init.zeros_(block.mlp.proj.weight)

    def forward(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        segments: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T), continuing kv_cache if given; with
        targets (B, T), the mean cross-entropy against them instead (see `loss`).

        attention_mask (B, T) marks real tokens (True/1) and padding (False/0) among idx, e.g.
        for left-padded prompts; position ids then count real tokens only. segments (B, T)
        numbers the examples packed into a row (1, 2, ...; 0 is padding): a token attends only
        within its own example, whose positions start again at 0. logits_to_keep > 0 computes
        logits for the last that many positions only (generation needs one).
        """
        x = self.encode(idx, kv_cache, attention_mask, segments)
        if targets is not None:
            return self.loss(x, targets)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.lm_head(x)  # (B, T | logits_to_keep, V)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the head's predictions from hidden (B, T, C) against targets
        (−100 ignored): head and softmax fused chunk by chunk (model/fused_head.py), so the
        (B, T, vocab) logits never exist; through F.cross_entropy when the head was replaced
        (LoRA, quantized) or has a bias."""
        head = self.lm_head
        if type(head) is nn.Linear and head.bias is None:
            return linear_cross_entropy(hidden, head, targets)
        logits = head(hidden)
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
        )

    def encode(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C), after ln_f: what the head and task heads read."""
        T = idx.shape[1]
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.cfg.block_size:
            raise LMForgeError(
                f"sequence of {start + T} tokens exceeds the context of {self.cfg.block_size} "
                "(model.block_size); crop the input"
            )
        if segments is not None:
            if kv_cache is not None or attention_mask is not None:
                raise LMForgeError("packed segments take neither a KV cache nor a padding mask")
            positions, mask = packed_positions_and_mask(segments.to(idx.device))
        else:
            positions, mask = self._positions_and_mask(idx, start, kv_cache, attention_mask)
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        elif self.cfg.pos_emb == "sincos":
            x = embed_with_sinusoids(x, self.sincos_positions[positions])
        else:
            rope = self.rope_rotations[positions]  # (T | B T, H + 2 Hkv, D/2)
        x = self.drop(x)
        recompute = self.activation_checkpointing and self.training
        for block in self.blocks:
            x = run_block(block, recompute, x, rope, kv_cache, mask)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.ln_f(x)

    def _positions_and_mask(
        self,
        idx: torch.Tensor,
        start: int,
        kv_cache: KVCache | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids (T,) or (B, T) and the attention mask; (arange, None) without padding."""
        if attention_mask is None and (kv_cache is None or not kv_cache.padded):
            return torch.arange(start, start + idx.shape[1], device=idx.device), None
        if attention_mask is None:
            real = torch.ones_like(idx, dtype=torch.bool)
        else:
            real = attention_mask.to(device=idx.device, dtype=torch.bool)
        if kv_cache is None:
            positions, real_keys = (real.cumsum(dim=1) - 1).clamp(min=0), real
        else:
            positions, real_keys = kv_cache.track_padding(real)
        return positions, padding_mask(real_keys, idx.shape[1], causal=True)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for up to max_len (default block_size) positions."""
        param = self.ln_f.weight  # not tok_emb: an int8 model's embedding has no float weight
        return KVCache(
            self.cfg.n_layer,
            batch_size,
            self.cfg.kv_heads,
            max_len or self.cfg.block_size,
            self.cfg.head_dim,
            device=param.device,
            dtype=param.dtype,
        )

    def num_params(self, exclude_position_embedding: bool = False) -> int:
        """Parameter count (a tied head counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N (matmuls) + 12·n_layer·(n_head·head_dim)·block_size
        (attention)."""
        n = self.num_params(exclude_position_embedding=True)
        if not self.cfg.tie_weights:
            n -= self.tok_emb.weight.numel()  # an untied input embedding is a lookup, not a matmul
        return 6 * n + 12 * self.cfg.n_layer * self.cfg.attn_width * self.cfg.block_size
