"""packed_linears: the same outputs and gradients, and the modules restored on the way out."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.model import BERT, GPT
from lmforge.model import onednn as packed_module
from lmforge.model.onednn import bf16_packing_available, packed_linears, packing_available

needs_onednn = pytest.mark.skipif(not packing_available(), reason="no oneDNN in this build")


def _gpt(bias: bool = True) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=61, bias=bias)
    return GPT(cfg).eval()


@pytest.fixture
def always_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route even these tiny products through oneDNN, so that its path is what gets tested."""
    monkeypatch.setattr(packed_module, "PACK_ALWAYS", 0)


def _patched(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


@needs_onednn
@pytest.mark.usefixtures("always_pack")
@pytest.mark.parametrize("bias", [True, False])
def test_packed_gpt_logits_equal_the_plain_ones(bias: bool) -> None:
    model = _gpt(bias)
    ids = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = model(ids)
        with packed_linears(model) as count:
            packed = model(ids)
            one_row = model(ids[:1, :5])  # another batch shape through the same packed weights
    assert count == 2 * 4 + 1  # qkv, proj, fc, proj per block, and the head
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_row, plain[:1, :5], atol=1e-5, rtol=1e-5)
    assert _patched(model) == []


@needs_onednn
@pytest.mark.usefixtures("always_pack")
def test_packed_bert_outputs_equal_the_plain_ones() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="bert", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, pos_emb="learned"
    )
    model = BERT(cfg).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.inference_mode():
        plain = model(ids, attention_mask=mask)
        with packed_linears(model) as count:
            packed = model(ids, attention_mask=mask)
    assert count > 0
    torch.testing.assert_close(packed.mlm, plain.mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.nsp, plain.nsp, atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.usefixtures("always_pack")
def test_gradients_inside_the_block_are_the_plain_ones() -> None:
    model = _gpt()
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(3))
    model(ids).logsumexp(-1).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with packed_linears(model):
        model(ids).logsumexp(-1).sum().backward()
    for expected, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected)


def test_modules_are_restored_after_an_error() -> None:
    model = _gpt()
    with pytest.raises(RuntimeError, match="boom"), packed_linears(model):
        raise RuntimeError("boom")
    assert _patched(model) == []


def test_disabled_or_unavailable_packing_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _gpt()
    with packed_linears(model, enabled=False) as count:
        assert count == 0
        assert _patched(model) == []
    monkeypatch.setattr(packed_module, "packing_available", lambda: False)
    ids = torch.randint(0, 61, (1, 8))
    with torch.no_grad():
        plain = model(ids)
        with packed_linears(model) as count:
            assert count == 0
            torch.testing.assert_close(model(ids), plain, atol=0, rtol=0)


@needs_onednn
def test_small_products_skip_the_fixed_cost_of_a_onednn_call(monkeypatch) -> None:
    """A decoding step of a small model (one row, 128x384 weight) runs the BLAS product;
    a large weight, or many rows, the packed one."""
    assert not packed_module._worth_packing(1, 128 * 384)
    assert not packed_module._worth_packing(8, 128 * 512)
    assert packed_module._worth_packing(1024, 128 * 384)
    assert packed_module._worth_packing(1, 768 * 768)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(
        packed_module, "_onednn_linear", lambda *a: calls.append(1) or real(*a), raising=True
    )
    model = _gpt()
    with torch.inference_mode(), packed_linears(model):
        model(torch.randint(0, 61, (1, 4)))
        assert calls == []
        model(torch.randint(0, 61, (128, 16)))  # 2,048 rows x 1,024-2,048 weights
        assert len(calls) >= 4


@needs_onednn
def test_one_row_products_take_the_path_measured_faster(monkeypatch) -> None:
    """Decoding (one row) uses the packed weights only where the start-up timing found them
    faster on this CPU; products of many rows use them either way."""
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(
        packed_module, "_onednn_linear", lambda *a: calls.append(1) or real(*a), raising=True
    )
    model = torch.nn.Sequential(torch.nn.Linear(768, 768)).eval()  # worth packing at one row
    for pays in (False, True):
        monkeypatch.setattr(packed_module, "_single_row_pays", lambda *a, pays=pays: pays)
        packed_module.release_packed(model)  # the verdict is kept with the packed copy
        calls.clear()
        with torch.inference_mode(), packed_linears(model):
            model(torch.randn(1, 768))
            one_row = len(calls)
            model(torch.randn(64, 768))
        assert one_row == (1 if pays else 0)
        assert len(calls) == one_row + 1


@pytest.mark.skipif(not bf16_packing_available(), reason="oneDNN cannot pack bf16 on this CPU")
@pytest.mark.usefixtures("always_pack")
def test_bf16_weights_are_packed_and_agree_with_the_plain_bf16_model() -> None:
    model = _gpt().to(torch.bfloat16)
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        plain = model(ids).float()
        with packed_linears(model) as count:
            packed = model(ids).float()
    assert count == len([m for m in model.modules() if isinstance(m, torch.nn.Linear)])
    torch.testing.assert_close(packed, plain, rtol=2e-2, atol=2e-2)


@needs_onednn
@pytest.mark.usefixtures("always_pack")
def test_packed_copies_are_reused_until_the_weights_change(monkeypatch) -> None:
    model = _gpt()
    reorders = []
    real = torch.ops.mkldnn._reorder_linear_weight

    def counting(weight, *rest):
        reorders.append(tuple(weight.shape))
        return real(weight, *rest)

    monkeypatch.setattr(packed_module, "_reorder", counting)
    ids = torch.randint(0, 61, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        with packed_linears(model) as count:
            first = model(ids)
        assert len(reorders) == count
        with packed_linears(model):  # unchanged weights: nothing packed again
            again = model(ids)
        assert len(reorders) == count
        torch.testing.assert_close(first, again)
        model.blocks[0].mlp.fc.weight.mul_(2.0)  # an in-place update: that copy is stale
        with packed_linears(model):
            changed = model(ids)
    assert len(reorders) == count + 1
    assert not torch.allclose(first, changed)
    packed_module.release_packed(model)
    assert not any(hasattr(m, packed_module.PACKED_ATTRIBUTE) for m in model.modules())


@needs_onednn
@pytest.mark.usefixtures("always_pack")
def test_bf16_weights_are_packed_only_where_the_cpu_can(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AVX2-only CPU refuses oneDNN's bf16 reorder: bf16 linears stay unpacked there."""
    model = _gpt().to(torch.bfloat16)
    monkeypatch.setattr(packed_module, "bf16_packing_available", lambda: False)
    with packed_linears(model) as count:
        assert count == 0
    fp32 = _gpt()
    with packed_linears(fp32) as count:
        assert count > 0  # fp32 packing does not depend on it
