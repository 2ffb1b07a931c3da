"""LoRA: a fresh adapter changes nothing, merge == unmerged, only adapters learn, the output is
W x + b + (α/r)·B A x by hand, and lora dropout acts on the adapter branch in training only."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model import BERT, GPT
from lmforge.model.heads import SequenceClassifier
from lmforge.model.lora import (
    LoRALinear,
    adapter_state_dict,
    add_lora,
    lora_layers,
    merge_lora,
    resolve_targets,
    trainable_share,
)

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=59)


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 59, (2, 16), generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.5)


def test_a_fresh_adapter_gives_the_base_logits() -> None:
    model = _gpt()
    with torch.no_grad():
        expected = model(_ids())
    names = add_lora(model, ["q", "v", "o"], r=4, alpha=8)
    assert sorted(names) == [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("proj", "qkv")]
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), expected, atol=0, rtol=0)


def test_merged_and_unmerged_adapters_agree() -> None:
    model = _gpt()
    add_lora(model, ["q", "o", "fc", "down"], r=4, alpha=16)
    _randomise_adapters(model)
    with torch.no_grad():
        unmerged = model(_ids())
        for layer in lora_layers(model).values():
            layer.merge()
        merged = model(_ids())
        for layer in lora_layers(model).values():
            layer.unmerge()
        again = model(_ids())
    assert float((merged - unmerged).abs().max()) <= 1e-5
    assert float((again - unmerged).abs().max()) <= 1e-5
    merge_lora(model)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(_gpt().state_dict())
    with torch.no_grad():
        assert float((model(_ids()) - unmerged).abs().max()) <= 1e-5


def test_only_adapters_and_heads_receive_gradients() -> None:
    model = SequenceClassifier(_gpt(), n_classes=3)
    add_lora(model, ["q", "v"], r=2, alpha=4, train_modules=("classifier",))
    mask = torch.ones(2, 16, dtype=torch.bool)
    model(_ids(), attention_mask=mask).sum().backward()
    for name, p in model.named_parameters():
        is_trained = "lora_" in name or name.startswith("classifier")
        assert p.requires_grad == is_trained, name
        assert (p.grad is not None) == is_trained, name
    trainable, total = trainable_share(model)
    expected = 2 * 2 * (32 + 3 * 32) + (32 * 3 + 3)  # A and B per qkv, then the classifier
    assert trainable == expected
    assert total > 10 * trainable
    assert set(adapter_state_dict(model)) == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


def test_lora_on_bert_and_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    bert = BERT(
        ModelConfig(arch="bert", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30)
    )
    add_lora(bert, ["qkv", "mlp"], r=2, alpha=2, dropout=0.5)
    assert len(lora_layers(bert)) == 3
    layer = next(iter(lora_layers(bert).values()))
    assert isinstance(layer, LoRALinear)
    bert.eval()
    ids = torch.randint(0, 30, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(bert(ids).mlm, bert(ids).mlm)


@pytest.mark.parametrize(
    ("targets", "needle"),
    [(["attention"], "matches no linear layer"), (["q"], None)],
)
def test_targets_that_match_nothing_list_what_exists(targets: list, needle: str | None) -> None:
    model = _gpt()
    if needle is None:
        assert resolve_targets(model, targets) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
        return
    with pytest.raises(ConfigError, match=needle) as info:
        resolve_targets(model, targets)
    assert "attn.qkv" in str(info.value)
    assert "mlp.fc" in str(info.value)


def test_bad_ranks_are_refused() -> None:
    with pytest.raises(ConfigError, match="r >= 1"):
        add_lora(_gpt(), ["q"], r=0, alpha=8)


IN, OUT = 6, 5


def _adapter(r: int, alpha: float, dropout: float = 0.0, zero_b: bool = False) -> LoRALinear:
    """A LoRALinear over a seeded nn.Linear(6 -> 5) with explicit seeded A (r, 6), B (5, r)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(IN, OUT), r, alpha, dropout)
    g = torch.Generator().manual_seed(r)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, IN, generator=g))
        layer.lora_B.copy_(torch.zeros(OUT, r) if zero_b else torch.randn(OUT, r, generator=g))
    return layer


def _x() -> torch.Tensor:
    return torch.randn(64, IN, generator=torch.Generator().manual_seed(3))


def _by_hand(layer: LoRALinear, x: torch.Tensor, r: int, alpha: float) -> torch.Tensor:
    """W x + b + (α / r) · B A x in float64, from the layer's tensors and the explicit r, α."""
    w, b = layer.base.weight.double(), layer.base.bias.double()
    a, b_up = layer.lora_A.double(), layer.lora_B.double()
    x = x.double()
    return x @ w.T + b + (alpha / r) * (x @ a.T @ b_up.T)


@pytest.mark.parametrize("r", [2, 8])
def test_output_is_base_plus_alpha_over_r_times_b_a_x(r: int) -> None:
    """α = 4: the update is scaled by 2 at r = 2 and by 0.5 at r = 8 (never by α itself)."""
    layer = _adapter(r, alpha=4.0).eval()
    x = _x()
    with torch.no_grad():
        expected = _by_hand(layer, x, r, 4.0)
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
        delta = (4.0 / r) * (layer.lora_B.double() @ layer.lora_A.double())
        torch.testing.assert_close(layer.delta().double(), delta, rtol=1e-6, atol=1e-6)
        layer.merge()
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_lora_dropout_is_random_in_training_and_off_in_eval() -> None:
    """With p = 0.5 two training passes differ from each other and from the exact output; in
    eval mode the output is W x + b + (α/r)·B A x, every time."""
    layer, x = _adapter(4, alpha=8.0, dropout=0.5), _x()
    exact = _by_hand(layer, x, 4, 8.0).float()
    layer.train()
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, exact)
    assert not torch.allclose(second, exact)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), exact, rtol=1e-5, atol=1e-5)
        assert torch.equal(layer(x), layer(x))


def test_lora_dropout_drops_the_adapters_input_only() -> None:
    """Training output = W x + b + (α/r)·B A (m ⊙ x / (1 − p)), with m the dropout mask drawn
    from the same seed: the base path never sees dropout (with B = 0 it is exactly W x + b)."""
    layer, x = _adapter(4, alpha=8.0, dropout=0.5).train(), _x()
    with torch.no_grad():
        torch.manual_seed(5)
        got = layer(x)
        torch.manual_seed(5)
        dropped = F.dropout(x, 0.5, training=True)
        assert 0 < int((dropped == 0).sum()) < x.numel()
        expected = x @ layer.base.weight.T + layer.base.bias
        expected = expected + 2.0 * (dropped @ layer.lora_A.T @ layer.lora_B.T)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        silent = _adapter(4, alpha=8.0, dropout=0.5, zero_b=True).train()
        assert torch.equal(silent(x), silent.base(x))


def _two_passes(dropout: float, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two forward passes of a GPT (no dropout of its own) with randomised LoRA adapters."""
    model = _gpt()
    add_lora(model, ["q", "o", "fc"], r=4, alpha=8, dropout=dropout)
    _randomise_adapters(model)
    model.train(train)
    with torch.no_grad():
        return model(_ids()), model(_ids())


def test_add_lora_passes_its_dropout_to_every_adapter() -> None:
    """In a GPT without dropout of its own, lora dropout alone makes training passes differ."""
    first, second = _two_passes(0.5, train=True)
    assert not torch.allclose(first, second)
    plain = _two_passes(0.0, train=True)
    assert torch.equal(*plain)
    eval_1, eval_2 = _two_passes(0.5, train=False)
    assert torch.equal(eval_1, eval_2)
    torch.testing.assert_close(eval_1, plain[0])  # the same weights: the same eval output
