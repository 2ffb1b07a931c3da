"""LoRA: a fresh adapter changes nothing, merge == unmerged, only adapters learn."""

import pytest
import torch

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
