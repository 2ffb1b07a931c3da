"""GPT: SDPA attention vs a naive reference, causality, KV cache, RoPE, init, counts, errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, LMForgeError
from lmforge.model import GPT
from lmforge.model.attention import causal_attention
from lmforge.model.layers import apply_rope, rope_cache


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d + causal mask)·V with queries aligned to the last positions of k."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.repeat_interleave(heads // kv_heads, dim=1)  # query head h reads kv head h // group
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    t_q, t_k = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    query_pos = torch.arange(t_k - t_q, t_k)[:, None]
    key_pos = torch.arange(t_k)[None, :]
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _model(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize(("t_q", "t_k"), [(7, 7), (1, 9), (3, 9), (6, 11)])
def test_sdpa_matches_naive_attention(
    generator: torch.Generator, heads: int, kv_heads: int, t_q: int, t_k: int
) -> None:
    q = torch.randn(2, heads, t_q, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(2, kv_heads, t_k, 8, generator=generator, dtype=torch.float64)
    v = torch.randn(2, kv_heads, t_k, 8, generator=generator, dtype=torch.float64)
    expected = _naive_attention(q, k, v)
    torch.testing.assert_close(causal_attention(q, k, v), expected, atol=1e-10, rtol=1e-10)


def test_last_query_of_a_chunk_sees_every_key(generator: torch.Generator) -> None:
    """The cached case: query i of a chunk sits at position t_k - t_q + i, not at i."""
    q = torch.randn(1, 2, 4, 8, generator=generator)
    k = torch.randn(1, 2, 10, 8, generator=generator)
    v = torch.randn(1, 2, 10, 8, generator=generator)
    full = causal_attention(q, k, v)
    for i in range(4):
        visible = 10 - 4 + i + 1
        alone = causal_attention(q[:, :, i : i + 1], k[:, :, :visible], v[:, :, :visible])
        torch.testing.assert_close(full[:, :, i : i + 1], alone, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("t", [0, 5, 15])
def test_changing_token_t_leaves_earlier_logits_unchanged(
    tiny_model_cfg: ModelConfig, generator: torch.Generator, pos_emb: str, t: int
) -> None:
    cfg = ModelConfig(**{**_fields(tiny_model_cfg), "pos_emb": pos_emb})
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=generator)
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % cfg.vocab_size
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=1e-6, rtol=0)
    # not vacuous: position t itself (and what follows) does see the change
    assert not torch.allclose(after[:, t:], before[:, t:], atol=1e-4)


def _fields(cfg: ModelConfig) -> dict:
    return {name: getattr(cfg, name) for name in ModelConfig.__dataclass_fields__}


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pos_emb": "rope"},
        {"n_head": 4, "n_kv_head": 2},
        {"n_head": 4, "n_kv_head": 1, "pos_emb": "rope", "bias": False, "tie_weights": False},
    ],
)
def test_kv_cache_decoding_equals_full_forward(
    tiny_model_cfg: ModelConfig, generator: torch.Generator, overrides: dict
) -> None:
    cfg = ModelConfig(**{**_fields(tiny_model_cfg), **overrides})
    model = _model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=generator)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_kv_cache(batch_size=2)
        chunks = [(0, 5), (5, 6), (6, 7), (7, 8), (8, 12), (12, 13), (13, 16)]
        pieces = []
        for start, end in chunks:
            assert cache.pos == start
            pieces.append(model(idx[:, start:end], kv_cache=cache))
    assert cache.pos == cfg.block_size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_beyond_block_size_raises(tiny_model_cfg: ModelConfig) -> None:
    model = _model(tiny_model_cfg)
    cache = model.new_kv_cache(batch_size=1)
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
        with pytest.raises(LMForgeError, match="block_size"):
            model(torch.zeros(1, 7, dtype=torch.long), kv_cache=cache)


def test_input_longer_than_block_size_raises(tiny_model_cfg: ModelConfig) -> None:
    model = _model(tiny_model_cfg)
    model(torch.zeros(1, tiny_model_cfg.block_size, dtype=torch.long))  # exactly full is fine
    with pytest.raises(LMForgeError, match="exceeds the context"):
        model(torch.zeros(1, tiny_model_cfg.block_size + 1, dtype=torch.long))


# ---------------------------------------------------------------- RoPE


def test_rope_preserves_norm(generator: torch.Generator) -> None:
    rotations = rope_cache(head_dim=16, max_positions=32, theta=10000.0)
    x = torch.randn(2, 32, 3, 16, generator=generator)
    rotated = apply_rope(x, rotations)
    assert rotated.shape == x.shape
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotated[:, 0], x[:, 0])  # position 0 is not rotated
    assert not torch.allclose(rotated[:, 1:], x[:, 1:], atol=1e-3)


def test_rope_dot_product_depends_only_on_relative_position(generator: torch.Generator) -> None:
    rotations = rope_cache(head_dim=16, max_positions=64, theta=10000.0)
    q = torch.randn(16, generator=generator)
    k = torch.randn(16, generator=generator)

    def score(m: int, n: int) -> torch.Tensor:
        qs = torch.zeros(1, 64, 1, 16)
        ks = torch.zeros(1, 64, 1, 16)
        qs[0, m, 0], ks[0, n, 0] = q, k
        return apply_rope(qs, rotations)[0, m, 0] @ apply_rope(ks, rotations)[0, n, 0]

    for offset in (0, 3, 17):
        reference = score(offset, 0)
        for shift in (1, 9, 40):
            torch.testing.assert_close(score(offset + shift, shift), reference, atol=1e-5, rtol=0)
    # not vacuous: different relative positions give different scores
    assert not torch.isclose(score(3, 0), score(17, 0), atol=1e-3)


# ---------------------------------------------------------------- init and counts


def test_gpt2_init_scales_residual_projections() -> None:
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=64, block_size=32, vocab_size=500)
    model = _model(cfg)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.blocks:
        for proj in (block.attn.proj, block.mlp.proj):
            assert proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
            assert proj.weight.mean().abs().item() < scaled / 5
        for plain in (block.attn.qkv, block.mlp.fc):
            assert plain.weight.std().item() == pytest.approx(0.02, rel=0.1)
        for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
            assert torch.count_nonzero(linear.bias) == 0
        assert torch.equal(block.ln_1.weight, torch.ones(cfg.n_embd))
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_weight_tying_shares_storage(tiny_model_cfg: ModelConfig) -> None:
    model = _model(tiny_model_cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = 1.5
    assert model.lm_head.weight[3, 0].item() == 1.5
    untied = _model(ModelConfig(**{**_fields(tiny_model_cfg), "tie_weights": False}))
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


def _expected_params(cfg: ModelConfig, with_pos: bool = True) -> int:
    """Count by hand from the architecture (biases on, tied head)."""
    c, v, d = cfg.n_embd, cfg.vocab_size, cfg.head_dim
    qkv_out = (cfg.n_head + 2 * cfg.kv_heads) * d
    per_layer = (
        2 * c  # ln_1
        + c * qkv_out
        + qkv_out  # qkv
        + c * c
        + c  # attn.proj
        + 2 * c  # ln_2
        + c * 4 * c
        + 4 * c  # mlp.fc
        + 4 * c * c
        + c  # mlp.proj
    )
    pos = cfg.block_size * c if with_pos and cfg.pos_emb == "learned" else 0
    head = 0 if cfg.tie_weights else v * c
    return v * c + pos + cfg.n_layer * per_layer + 2 * c + head


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_weights": False}, {"pos_emb": "rope"}, {"n_head": 4, "n_kv_head": 2}],
)
def test_num_params_counts_tied_weights_once(tiny_model_cfg: ModelConfig, overrides: dict) -> None:
    cfg = ModelConfig(**{**_fields(tiny_model_cfg), **overrides})
    model = _model(cfg)
    assert model.num_params() == _expected_params(cfg)
    assert model.num_params(exclude_position_embedding=True) == _expected_params(cfg, False)
    unique = {p.data_ptr(): p.numel() for p in model.state_dict().values()}
    assert model.num_params() == sum(unique.values())


def test_flops_per_token_formula(tiny_model_cfg: ModelConfig) -> None:
    cfg = tiny_model_cfg
    model = _model(cfg)
    n = _expected_params(cfg, with_pos=False)  # the tied matrix counts once, as the head matmul
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert model.flops_per_token() == 6 * n + attention
    # untying adds an input lookup, not a matmul: the FLOPs stay the same
    untied = _model(ModelConfig(**{**_fields(cfg), "tie_weights": False}))
    assert untied.flops_per_token() == model.flops_per_token()


# ---------------------------------------------------------------- configuration errors


def test_n_embd_not_divisible_by_n_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(n_layer=2, n_head=3, n_embd=32, block_size=16, vocab_size=97)


def test_n_head_not_divisible_by_n_kv_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_layer=2, n_head=4, n_kv_head=3, n_embd=32, block_size=16, vocab_size=97)


def test_zero_init_proj_starts_every_block_as_identity_and_still_learns() -> None:
    """model.zero_init_proj: each block's output projections start at zero, so the model
    begins as embedding -> ln_f -> head; the projections get gradients and move."""
    base = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=61)
    torch.manual_seed(0)
    zeroed = GPT(dataclasses.replace(base, zero_init_proj=True))
    torch.manual_seed(0)
    plain = GPT(base)
    for block in zeroed.blocks:
        assert not block.attn.proj.weight.any()
        assert not block.mlp.proj.weight.any()
    assert plain.blocks[0].attn.proj.weight.any()  # the switch does something
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = zeroed.lm_head(zeroed.ln_f(zeroed.tok_emb(ids) + zeroed.pos_emb.weight[:16]))
        torch.testing.assert_close(zeroed(ids), direct)
    F.cross_entropy(zeroed(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert zeroed.blocks[0].mlp.proj.weight.grad.abs().sum() > 0
