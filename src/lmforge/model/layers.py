"""Building blocks shared by the models: normalisation, MLPs, rotary positions, initialisation."""

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig


def run_block(block: nn.Module, recompute: bool, *args: object) -> torch.Tensor:
    """block(*args). recompute (activation checkpointing): keep only the block's input, and run
    its forward again during the backward pass (less memory, about a third more compute)."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)  # dropout masks are replayed
    return block(*args)


def layer_norm(cfg: ModelConfig) -> nn.Module:
    """The model's normalisation over the residual width:
    LayerNorm (x − μ)/√(σ² + ε)·γ + β (β only with model.bias), or RMSNorm x/√(mean(x²) + ε)·γ."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.ln_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps, bias=cfg.bias)


class MLP(nn.Module):
    """Position-wise feed-forward, n_embd -> mlp_width -> n_embd:

    gelu / gelu_tanh: proj(gelu(fc(x)))               (GPT-2, BERT; mlp_width 4 n_embd)
    swiglu:           proj(silu(x W_gate) ⊙ x W_up)     (Llama; fc holds [W_gate; W_up])
    relu2:            proj(relu(fc(x))²)               (Primer; So et al. 2021)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.activation = cfg.activation
        gated = 2 if cfg.activation == "swiglu" else 1
        self.fc = nn.Linear(cfg.n_embd, gated * cfg.mlp_width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_projection = True  # scaled init, see init_weights
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.dropout(self.proj(h))


class NgramEmbedding(nn.Module):
    """Hashed n-gram embeddings (fastText, Joulin et al. 2017), added to the token embedding.

    For each order n in 2..N, the n tokens ending at position t hash into one of B buckets,
        h_n(t) = (Σ_{k<n} (x_{t-k} + 1) · p_k) mod B,   e_t += E_n[h_n(t)],
    with x before the start read as -1 (so a sequence's first tokens have n-grams of their own)
    and fixed large primes p. Only tokens at or before t take part: right padding cannot
    change a real position. Collisions share a vector, which the hashing trick accepts.
    """

    PRIMES = (1_000_003, 998_244_353, 19_260_817, 2_147_483_647, 1_400_305_337)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.buckets = cfg.ngram_buckets
        self.orders = range(2, cfg.ngram_n + 1)
        self.tables = nn.ModuleList(nn.Embedding(self.buckets, cfg.n_embd) for _ in self.orders)

    def bucket_ids(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """h_n(t) for every position of idx (B, T): bucket ids (B, T)."""
        shifted = F.pad(idx + 1, (n - 1, 0))  # 0 marks "before the start"
        T = idx.shape[1]
        h = torch.zeros_like(idx)
        for k in range(n):
            window = shifted[:, n - 1 - k : n - 1 - k + T]  # x_{t-k} + 1
            h = (h + window * self.PRIMES[k]) % self.buckets
        return h

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return sum(
            table(self.bucket_ids(idx, n))
            for n, table in zip(self.orders, self.tables, strict=True)
        )


class CountedNgramEmbedding(nn.Module):
    """N-gram embeddings with a vocabulary counted from the pretraining text, added to the token
    embedding: the n-grams seen at least model.ngram_min_count times (the most frequent
    model.ngram_buckets of them) get a row each; every other n-gram shares row 0, so a rare
    n-gram neither collides with a frequent one nor gets a vector of its own to overfit.

    Each n-gram of order n ending at t has an exact 64-bit code, its tokens read as digits of
    base V + 1 (x before the start read as -1, digit 0), with the order as the leading digit:
        c_n(t) = n·(V+1)^n + Σ_{k<n} (x_{t-k} + 1)·(V+1)^k,
    so codes of different orders or tokens never coincide. The sorted codes of the vocabulary
    are a buffer (saved with the weights); a lookup is a binary search.
    """

    ABSENT = torch.iinfo(torch.int64).max  # fills unused vocabulary slots; no code reaches it

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.base = cfg.vocab_size + 1
        self.orders = range(2, cfg.ngram_n + 1)
        self.table = nn.Embedding(cfg.ngram_buckets + 1, cfg.n_embd)  # row 0: any other n-gram
        self.register_buffer("codes", torch.full((cfg.ngram_buckets,), self.ABSENT))

    def ngram_codes(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """c_n(t) for every position of idx (B, T) (or a 1-D stream): codes of the same shape."""
        shifted = F.pad(idx.long() + 1, (n - 1, 0))  # 0 marks "before the start"
        T = idx.shape[-1]
        code = torch.full_like(idx, n, dtype=torch.long)
        for k in reversed(range(n)):  # Horner: the oldest token is the most significant digit
            code = code * self.base + shifted[..., n - 1 - k : n - 1 - k + T]
        return code

    @torch.no_grad()
    def fit(self, streams: Iterable[torch.Tensor], min_count: int) -> int:
        """Set the vocabulary from token streams (1-D each, each read as one sequence): the
        n-grams seen at least min_count times in all, most frequent first (ties: smaller code),
        as many as there are rows. Returns how many were kept."""
        codes, counts = [], []
        for stream in streams:
            for n in self.orders:
                unique, seen = torch.unique(self.ngram_codes(stream, n), return_counts=True)
                codes.append(unique)
                counts.append(seen)
        if not codes:
            return 0
        unique, where = torch.unique(torch.cat(codes), return_inverse=True)  # sorted codes
        total = torch.zeros_like(unique).scatter_add_(0, where, torch.cat(counts))
        by_count = torch.sort(total, descending=True, stable=True).indices  # ties keep code order
        frequent = by_count[total[by_count] >= min_count][: len(self.codes)]
        self.codes.fill_(self.ABSENT)
        self.codes[: len(frequent)] = torch.sort(unique[frequent]).values
        return len(frequent)

    def rows(self, codes: torch.Tensor) -> torch.Tensor:
        """The table row of each code: its place in the vocabulary + 1, or 0 when absent."""
        place = torch.searchsorted(self.codes, codes).clamp(max=len(self.codes) - 1)
        return torch.where(self.codes[place] == codes, place + 1, 0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return sum(self.table(self.rows(self.ngram_codes(idx, n))) for n in self.orders)


def ngram_embedding(cfg: ModelConfig) -> nn.Module | None:
    """The n-gram embeddings model.ngram_* asks for (None when model.ngram_buckets is 0)."""
    if not cfg.ngram_buckets:
        return None
    return CountedNgramEmbedding(cfg) if cfg.ngram_min_count else NgramEmbedding(cfg)


def sinusoidal_positions(max_positions: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """The original Transformer's fixed position encodings (Vaswani et al. 2017, §3.5), (T, C):

        PE(p, 2i) = sin(p / base^(2i/C)),   PE(p, 2i+1) = cos(p / base^(2i/C))

    Sine and cosine of one frequency sit side by side (interleaved), and the exponent is 2i/C
    over the model width C, not over a head's width.
    """
    exponent = torch.arange(0, width, 2, dtype=torch.float64) / width  # 2i/C, (C/2,)
    angles = torch.arange(max_positions, dtype=torch.float64)[:, None] / base**exponent
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, C/2, 2)
    return table.reshape(max_positions, width).float()


def rope_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None = None
) -> torch.Tensor:
    """ω_j = θ^(-2j/d) for each pair j (float32, d/2), rescaled as model.rope_scaling says.

    Llama 3 scaling (rope_type llama3): with wavelength λ_j = 2π/ω_j, context L (the original
    max positions) and factors f, l < h: λ_j > L/l (slow, long-range pairs): ω_j / f; λ_j < L/h
    (fast pairs): ω_j unchanged; in between, the blend (1 − s)·ω_j/f + s·ω_j with
    s = (L/λ_j − l) / (h − l), which runs from 0 at λ = L/l to 1 at λ = L/h.
    """
    omega = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling is None:
        return omega
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / omega
    blend = ((context / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    scaled = (1 - blend) * omega / factor + blend * omega
    scaled = torch.where(wavelength > context / low, omega / factor, scaled)
    return torch.where(wavelength < context / high, omega, scaled)


def rope_cache(
    head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None = None
) -> torch.Tensor:
    """e^(i·p·ω_j) for every position p and pair j: complex64 (T, head_dim / 2)."""
    omega = rope_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), omega)  # (T, D/2)
    return torch.polar(torch.ones_like(angles), angles)


def rope_table(rotations: torch.Tensor, n_head: int, n_kv_head: int) -> torch.Tensor:
    """Per-head rotations for a fused qkv tensor: q and k heads rotate, v heads get exactly 1.

    Rotating the whole qkv output in one multiply avoids slicing it: the backward pass of a
    slice zero-fills and scatters into the full gradient, which cost more than the rotation.
    """
    T, half = rotations.shape
    rotating = rotations[:, None, :].expand(T, n_head + n_kv_head, half)
    identity = torch.ones(T, n_kv_head, half, dtype=rotations.dtype)
    return torch.cat([rotating, identity], dim=1)  # (T, H + 2 Hkv, D/2)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair (x_2j, x_2j+1) of x (B, T, N, D) by its position's angle.

    rotations is (T, D/2) for every head alike, or (T, N, D/2) per head (see rope_table). Pairs
    are read as complex numbers, so the rotation is one complex multiply (about 3x faster on
    CPU, forward and backward, than the rotate-half formulation with its cat and negation).
    """
    B, T, N, D = x.shape
    if rotations.dim() == 2:
        rotations = rotations[:, None, :]
    pairs = torch.view_as_complex(x.float().reshape(B, T, N, D // 2, 2))  # (B, T, N, D/2)
    rotated = torch.view_as_real(pairs * rotations)  # (B, T, N, D/2, 2)
    return rotated.reshape(B, T, N, D).type_as(x)


def init_weights(module: nn.Module, std: float, n_layer: int = 0) -> None:
    """N(0, std) weights, zero biases; with n_layer > 0, residual projections are scaled by
    1/√(2·n_layer) as in GPT-2 (BERT passes 0 and leaves them)."""
    if isinstance(module, nn.Linear):
        residual = getattr(module, "is_residual_projection", False)
        scale = 1 / math.sqrt(2 * n_layer) if residual and n_layer > 0 else 1.0
        nn.init.normal_(module.weight, mean=0.0, std=std * scale)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
