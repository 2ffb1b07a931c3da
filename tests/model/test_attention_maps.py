"""Attention maps are the probabilities the model used: P·V through each module's output
projection reproduces that module's own output (GPT with learned positions, GPT with RoPE,
grouped-query heads and q/k norm, BERT with and without padding); rows sum to 1; GPT's maps are
causal and BERT's are not."""

from typing import Any

import pytest
import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model import BERT, GPT
from lmforge.model.attention import Attention
from lmforge.model.attention_maps import attention_maps, attention_modules, recording_attention
from lmforge.model.lora import add_lora, lora_layers

T = 12
TINY = {"n_layer": 2, "n_embd": 32, "block_size": 32, "vocab_size": 61}


def _gpt_learned() -> nn.Module:
    return GPT(ModelConfig(n_head=4, **TINY))


def _gpt_rope_gqa_qk_norm() -> nn.Module:
    cfg = ModelConfig(
        n_head=4, n_kv_head=2, pos_emb="rope", qk_norm=True, norm="rmsnorm", bias=False, **TINY
    )
    return GPT(cfg)


def _bert() -> nn.Module:
    return BERT(ModelConfig(arch="bert", n_head=4, **TINY))


MODELS = {"gpt-learned": _gpt_learned, "gpt-rope-gqa-qknorm": _gpt_rope_gqa_qk_norm, "bert": _bert}


def _seeded(build: Any) -> nn.Module:
    torch.manual_seed(0)
    model = build().eval()
    for p in model.parameters():  # larger weights than the init's: sharp, distinct maps
        p.data.mul_(4.0)
    return model


def _module_io(model: nn.Module, idx: torch.Tensor, **kwargs: Any) -> dict[int, tuple]:
    """Each attention module's input x and its output, recorded by hooks of the test's own."""
    seen: dict[int, tuple] = {}

    def keep(module: Attention, args: tuple, kw: dict, out: torch.Tensor) -> None:
        x = args[0] if args else kw["x"]
        seen[module.layer] = (module, x, out)

    hooks = [m.register_forward_hook(keep, with_kwargs=True) for m in attention_modules(model)]
    with torch.no_grad():
        model(idx, **kwargs)
    for hook in hooks:
        hook.remove()
    return seen


def _values(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """V (B, H, T, D): the third part of the fused projection, kv heads shared by H / H_kv
    query heads (v is neither normed nor rotated)."""
    B, T, _ = x.shape
    H, Hkv, D = module.n_head, module.n_kv_head, module.head_dim
    v = module.qkv(x).view(B, T, H + 2 * Hkv, D)[:, :, H + Hkv :].transpose(1, 2)
    return v.repeat_interleave(H // Hkv, dim=1)


def _output_from_maps(module: Attention, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """proj(concat_h(P_h · V_h)): the module's output rebuilt from the maps."""
    B, T, _ = x.shape
    y = probs @ _values(module, x)  # (B, H, T, D)
    return module.proj(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("name", list(MODELS))
def test_maps_times_values_reproduce_each_attention_output(name: str) -> None:
    model = _seeded(MODELS[name])
    idx = torch.randint(0, 61, (1, T), generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, idx)
    assert maps.shape == (2, 4, T, T)
    io = _module_io(model, idx)
    for layer, (module, x, out) in io.items():
        with torch.no_grad():
            rebuilt = _output_from_maps(module, x, maps[layer][None])
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)
    # the check has teeth: another layer's maps (or uniform attention) do not reproduce it
    module, x, out = io[1]
    with torch.no_grad():
        wrong = _output_from_maps(module, x, maps[0][None])
    assert (wrong - out).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_rows_are_probability_distributions(name: str) -> None:
    maps = attention_maps(_seeded(MODELS[name]), torch.arange(T) % 61)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, T))


@pytest.mark.parametrize("name", ["gpt-learned", "gpt-rope-gqa-qknorm"])
def test_gpt_maps_are_causal(name: str) -> None:
    maps = attention_maps(_seeded(MODELS[name]), torch.arange(T))
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (maps[..., future] == 0).all()
    assert (maps[..., ~future] > 0).all()
    assert maps[:, :, 0, 0].eq(1).all()  # the first token can only look at itself


def test_bert_attends_both_ways() -> None:
    maps = attention_maps(_seeded(_bert), torch.arange(T))
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert (maps[..., future] > 0).all()


def test_grouped_query_heads_sharing_keys_still_differ() -> None:
    """Heads 0 and 1 read one kv head but have their own queries: their maps differ."""
    maps = attention_maps(_seeded(_gpt_rope_gqa_qk_norm), torch.arange(T))
    assert (maps[:, 0] - maps[:, 1]).abs().max() > 1e-3


def test_bert_padding_gets_no_attention_and_outputs_still_match() -> None:
    model = _seeded(_bert)
    idx = torch.arange(T)[None]
    real = torch.ones(1, T, dtype=torch.bool)
    real[0, -3:] = False
    with recording_attention(model) as maps, torch.no_grad():
        model(idx, attention_mask=real)
    for layer, (module, x, out) in _module_io(model, idx, attention_mask=real).items():
        probs = maps[layer]
        assert (probs[0, :, : T - 3, T - 3 :] == 0).all()  # real queries ignore padding
        with torch.no_grad():
            rebuilt = _output_from_maps(module, x, probs)
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)


def test_lora_adapters_on_qkv_are_part_of_the_maps() -> None:
    """A LoRA run's qkv is base + (α/r)·B·A: the maps use it, and the update changes them."""
    model = _seeded(_gpt_rope_gqa_qk_norm)
    idx = torch.arange(T)
    before = attention_maps(model, idx)
    add_lora(model, ["qkv"], r=2, alpha=4.0)
    for layer in lora_layers(model).values():
        layer.lora_B.data.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    maps = attention_maps(model, idx)
    assert (maps - before).abs().max() > 1e-3
    for layer, (module, x, out) in _module_io(model, idx[None]).items():
        with torch.no_grad():
            rebuilt = _output_from_maps(module, x, maps[layer][None])
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)


def test_the_hooks_are_removed_after_recording() -> None:
    model = _seeded(_gpt_learned)
    attention_maps(model, torch.arange(4))
    assert all(not m._forward_pre_hooks for m in attention_modules(model))


def test_a_model_without_lmforge_attention_is_refused() -> None:
    with pytest.raises(LMForgeError, match="GPT or BERT"):
        attention_maps(nn.Linear(3, 3), torch.arange(3))
