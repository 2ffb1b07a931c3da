"""BERT: a bidirectional Transformer encoder with MLM and NSP heads (Devlin et al. 2019).

Post-LayerNorm blocks, as in the original, so Hugging Face BERT weights map one to one.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model.attention import Attention, padding_mask
from lmforge.model.layers import MLP, init_weights, layer_norm, ngram_embedding, run_block


class EncoderBlock(nn.Module):
    """x = ln_1(x + attn(x)), then x = ln_2(x + mlp(x)): post-LN."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn = Attention(cfg, layer, causal=False)
        self.ln_1 = layer_norm(cfg)
        self.mlp = MLP(cfg)
        self.ln_2 = layer_norm(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, mask=mask))
        return self.ln_2(x + self.mlp(x))


class PretrainingLogits(NamedTuple):
    mlm: torch.Tensor  # (B, T, V) masked-token logits
    nsp: torch.Tensor  # (B, 2) next-sentence logits: 0 = B follows A, 1 = B is random


class BERT(nn.Module):
    """Token + position + segment embeddings -> EncoderBlock × n_layer, with MLM and NSP heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise LMForgeError("model.vocab_size must be set (> 0) before building a BERT")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        types = cfg.type_vocab_size
        self.type_emb = nn.Embedding(types, cfg.n_embd) if types else None
        self.ngram_emb = ngram_embedding(cfg)
        self.emb_ln = layer_norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layer))
        self.activation_checkpointing = False  # recompute each block in training's backward
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlm_transform = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlm_ln = layer_norm(cfg)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.nsp_head = nn.Linear(cfg.n_embd, 2)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.apply(lambda m: init_weights(m, cfg.init_std))

    def encode(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextual hidden states (B, T, C); attention_mask (B, T) is True on real tokens."""
        T = idx.shape[1]
        if idx.shape[1] > self.cfg.block_size:
            raise LMForgeError(
                f"sequence of {T} tokens exceeds the context of {self.cfg.block_size} "
                "(model.block_size); truncate the input"
            )
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))  # (B, T, C)
        if self.type_emb is not None:
            types = token_types if token_types is not None else torch.zeros_like(idx)
            x = x + self.type_emb(types)
        if self.ngram_emb is not None:
            x = x + self.ngram_emb(idx)
        x = self.drop(self.emb_ln(x))
        mask = None
        if attention_mask is not None:
            mask = padding_mask(attention_mask.to(torch.bool), T, causal=False)  # (B, 1, T, T)
        recompute = self.activation_checkpointing and self.training
        for block in self.blocks:
            x = run_block(block, recompute, x, mask)
        return x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sentence vector (B, C): tanh(W·h_[CLS] + b)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states (..., C): E·LN(gelu(W·h + b)) + bias, E tied."""
        h = F.gelu(self.mlm_transform(hidden), approximate=self.approximate)
        return F.linear(self.mlm_ln(h), self.tok_emb.weight, self.mlm_bias)

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-sentence logits (B, 2) from the pooled [CLS] vector."""
        return self.nsp_head(self.pool(hidden))

    def forward(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> PretrainingLogits:
        hidden = self.encode(idx, token_types, attention_mask)
        return PretrainingLogits(self.mlm_logits(hidden), self.nsp_logits(hidden))

    def num_params(self, exclude_position_embedding: bool = False) -> int:
        """Parameter count (the tied MLM decoder counts once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if exclude_position_embedding else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N (matmuls) + 12·n_layer·n_embd·block_size (attention)."""
        n = self.num_params(exclude_position_embedding=True)
        for lookup in (self.type_emb, self.ngram_emb):
            n -= 0 if lookup is None else sum(p.numel() for p in lookup.parameters())
        return 6 * n + 12 * self.cfg.n_layer * self.cfg.n_embd * self.cfg.block_size
