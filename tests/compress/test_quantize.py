"""Int8 quantization: close logits, 4x smaller linear weights, exact save/load."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.compress import quantize as quantize_module
from lmforge.compress.quantize import (
    DequantizedInt8Linear,
    Int8Embedding,
    int8_per_channel,
    int8_tensors,
    linear_weight_bytes,
    load_int8,
    model_bytes,
    quantize_int8,
    quantized_layers,
    tied_embeddings,
)
from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.model import GPT

CFG = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=211, pos_emb="rope")


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 211, (3, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["int8 kernel everywhere", "small layers dequantized"])
def small_layers(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with PyTorch's dynamic int8 kernel in every layer, and with the default
    choice (this test model's layers are all below DYNAMIC_MIN_ELEMENTS)."""
    if request.param == "int8 kernel everywhere":
        monkeypatch.setattr(quantize_module, "DYNAMIC_MIN_ELEMENTS", 0)
    return request.param


def test_per_channel_int8_rounds_each_weight_to_half_a_step() -> None:
    w = torch.randn(16, 40) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different scale
    q, scale = int8_per_channel(w)
    assert q.dtype == torch.int8
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127)  # one scale per output row
    assert bool((q.abs().amax(dim=1) == 127).all())  # every row uses its whole int8 range
    error = (q.float() * scale[:, None] - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())


@pytest.mark.usefixtures("small_layers")
@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight-only"])
def test_quantized_logits_stay_close_to_the_float_ones(scheme: str) -> None:
    model = _model()
    quantized, used = quantize_int8(model, scheme)
    assert used == scheme
    assert len(quantized_layers(quantized)) == 2 * 4 + 1
    with torch.no_grad():
        ref, got = model(_ids()), quantized(_ids())
    diff = (got - ref).abs()
    spread = float(ref.std())
    assert float(diff.max()) < 0.2 * spread, (float(diff.max()), spread)
    assert float(diff.mean()) < 0.04 * spread, (float(diff.mean()), spread)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert any(isinstance(p, torch.nn.Linear) for p in model.modules())  # the float model kept


def test_linear_weights_shrink_about_four_times() -> None:
    model = _model()
    quantized, _ = quantize_int8(model)
    ratio = linear_weight_bytes(model) / linear_weight_bytes(quantized)
    assert 3.5 < ratio <= 4.0


@pytest.mark.usefixtures("small_layers")
@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight-only"])
def test_save_and_load_give_the_same_logits(tmp_path, scheme: str) -> None:
    quantized, _ = quantize_int8(_model(), scheme)
    tensors = int8_tensors(quantized)
    assert tensors["blocks.0.attn.qkv.weight"].dtype == torch.int8
    save_file(tensors, str(tmp_path / "q.safetensors"))
    loaded = load_int8(GPT(CFG), load_file(str(tmp_path / "q.safetensors")), scheme)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_ids()), quantized(_ids()), atol=0, rtol=0)


def test_only_layers_large_enough_for_the_int8_kernel_use_it() -> None:
    """A 64x256 MLP layer runs fp32 from a dequantized copy (the int8 call would cost more than
    the product); a 1024x512 one runs PyTorch's dynamic int8 kernel. Both store int8."""
    cfg = ModelConfig(n_layer=1, n_head=4, n_embd=64, block_size=8, vocab_size=4096)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    quantized, _ = quantize_int8(model, "int8-dynamic")
    assert isinstance(quantized.blocks[0].mlp.fc, DequantizedInt8Linear)
    assert not isinstance(quantized.lm_head, DequantizedInt8Linear)  # 4096 x 64 = 2^18
    assert "lm_head" in quantized_layers(quantized)
    fc = quantized.blocks[0].mlp.fc
    torch.testing.assert_close(fc.weight, fc.weight_int8.float() * fc.weight_scale[:, None])
    stored, resident = linear_weight_bytes(quantized), linear_weight_bytes(quantized, True)
    assert resident - stored == 4 * sum(
        m.weight.numel() for m in quantized.modules() if isinstance(m, DequantizedInt8Linear)
    )
    assert set(int8_tensors(quantized)) == set(int8_tensors(quantize_int8(model)[0]))


def test_loading_weights_of_another_model_names_the_problem() -> None:
    quantized, scheme = quantize_int8(_model())
    tensors = int8_tensors(quantized)
    del tensors["blocks.1.mlp.fc.weight_scale"]
    with pytest.raises(CheckpointError, match=r"blocks.1.mlp.fc.weight_scale"):
        load_int8(GPT(CFG), tensors, scheme)
    tensors = int8_tensors(quantized)
    tensors["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected.*extra\.weight"):
        load_int8(GPT(CFG), tensors, scheme)


@pytest.mark.usefixtures("small_layers")
@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight-only"])
def test_a_tied_head_is_stored_once_and_the_embedding_reads_its_int8_table(
    tmp_path, scheme: str
) -> None:
    """The tied embedding is not kept in fp32 beside an int8 head: the file holds one int8
    table (V x C) + V scales, and token lookups give s_i · q_i, the head's own rows."""
    model = _model()
    assert tied_embeddings(model) == {"lm_head": "tok_emb"}
    quantized, _ = quantize_int8(model, scheme)
    assert isinstance(quantized.tok_emb, Int8Embedding)
    tensors = int8_tensors(quantized)
    assert "tok_emb.weight" not in tensors
    q, scale = tensors["lm_head.weight"], tensors["lm_head.weight_scale"]
    ids = _ids()
    expected = q[ids].float() * scale[ids][..., None]
    torch.testing.assert_close(quantized.tok_emb(ids), expected, atol=0, rtol=0)
    path = tmp_path / "q.safetensors"
    save_file(tensors, str(path))
    loaded = load_int8(GPT(CFG), load_file(str(path)), scheme)
    assert isinstance(loaded.tok_emb, Int8Embedding)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), quantized(ids), atol=0, rtol=0)
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert model_bytes(quantized) == path.stat().st_size - header


def test_the_whole_model_shrinks_not_only_its_linear_layers() -> None:
    """Every tensor counted, tied ones once: fp32 bytes / int8 bytes near 4 when the matrices
    dominate (the norms and per-channel scales stay fp32)."""
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=32, vocab_size=1024)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    fp32 = model_bytes(model)
    assert fp32 == 4 * sum(p.numel() for p in model.parameters())  # tied head counted once
    assert 3.6 < fp32 / model_bytes(quantize_int8(model)[0]) <= 4.0


def test_an_untied_embedding_stays_float() -> None:
    cfg = ModelConfig(
        n_layer=1, n_head=4, n_embd=64, block_size=8, vocab_size=97, tie_weights=False
    )
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    quantized, _ = quantize_int8(model)
    assert tied_embeddings(model) == {}
    assert isinstance(quantized.tok_emb, torch.nn.Embedding)
    assert int8_tensors(quantized)["tok_emb.weight"].dtype == torch.float32


def test_files_written_before_tied_heads_were_shared_still_load() -> None:
    """Older int8 runs stored the tied embedding in fp32 beside the int8 head."""
    quantized, scheme = quantize_int8(_model())
    tensors = int8_tensors(quantized)
    tensors["tok_emb.weight"] = _model().tok_emb.weight.detach().clone()
    loaded = load_int8(GPT(CFG), tensors, scheme)
    assert isinstance(loaded.tok_emb, torch.nn.Embedding)
    with torch.no_grad():
        torch.testing.assert_close(loaded.tok_emb.weight, tensors["tok_emb.weight"])
