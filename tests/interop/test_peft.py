"""Un-merged LoRA adapters exported in the PEFT format give our logits in transformers + peft."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BertForPreTraining

from lmforge.errors import CheckpointError
from lmforge.interop import hf
from lmforge.jobs.interop import export_hf
from lmforge.model.lora import add_lora
from lmforge.rundir import layout
from lmforge.rundir.adapters import save_adapter
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer

from .twins import random_ids, right_padding, tiny_run

ATOL = 1e-4


def _base_run(tmp_path: Path, tokenizer: Tokenizer, **model: object) -> Path:
    return tiny_run(tmp_path / "base", tokenizer, **model)


def _adapter_run(
    tmp_path: Path, base: Path, targets: list[str], heads: tuple[str, ...] = ()
) -> Path:
    """LoRA (r 4, alpha 8) on the targets with random B, saved as an adapter run of base."""
    _, model, _ = load_run(base)
    layers = add_lora(model, targets, r=4, alpha=8.0, train_modules=heads)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in layers:
            lora_b = model.get_submodule(name).lora_B
            lora_b.copy_(0.2 * torch.randn(lora_b.shape, generator=g))
    run = tmp_path / "adapter-run"
    run.mkdir()
    for name in (layout.CONFIG_FILE, layout.TOKENIZER_FILE):
        shutil.copy(base / name, run / name)
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, "layers": layers, "heads": list(heads)}
    save_adapter(run, model, base, settings)
    return run


def _gpt_logits(model: torch.nn.Module, vocab: int, theirs: bool) -> torch.Tensor:
    ids, mask = random_ids(vocab, (2, 40), seed=4), right_padding([40, 17], 40)
    with torch.no_grad():
        logits = (
            model(ids, attention_mask=mask).logits if theirs else model(ids, attention_mask=mask)
        )
    return logits[mask.bool()]


LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "pos_emb": "rope", "bias": False}


@pytest.mark.parametrize(
    ("model", "targets", "architecture", "per_block"),
    [
        ({"pos_emb": "learned", "bias": True}, ["q", "o", "fc", "down"], "GPT2LMHeadModel", 4),
        ({"pos_emb": "rope", "bias": False}, ["qkv", "o", "mlp"], "GPTNeoXForCausalLM", 4),
        # q, k, v and gate, up are one fused layer here, two or three modules there
        ({**LLAMA, "n_kv_head": 2}, ["qkv", "o", "fc", "down"], "LlamaForCausalLM", 7),
        ({**LLAMA, "qk_norm": True, "tie_weights": False}, ["qkv", "fc"], "Qwen3ForCausalLM", 5),
        ({**LLAMA, "qkv_bias": True}, ["qkv", "down"], "Qwen2ForCausalLM", 4),
    ],
)
def test_exported_gpt_adapter_in_peft_gives_our_logits(
    tmp_path: Path,
    bpe_tokenizer: Tokenizer,
    model: dict,
    targets: list[str],
    architecture: str,
    per_block: int,
) -> None:
    base = _base_run(tmp_path, bpe_tokenizer, **model)
    run = _adapter_run(tmp_path, base, targets)
    summary = export_hf(run, tmp_path / "hf")
    assert summary["adapted_modules"] == 2 * per_block
    hf_base = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_base).__name__ == architecture
    vocab = bpe_tokenizer.vocab_size
    without = _gpt_logits(hf_base, vocab, theirs=True)
    theirs = PeftModel.from_pretrained(hf_base, tmp_path / "hf" / "adapter").eval()
    expected = _gpt_logits(load_run(run)[1], vocab, theirs=False)
    got = _gpt_logits(theirs, vocab, theirs=True)
    assert (expected - without).abs().max() > 0.1  # the adapter is not a no-op
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_exported_bert_adapter_splits_qkv_into_three_peft_loras(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    base = _base_run(tmp_path, bpe_tokenizer, arch="bert", type_vocab_size=2)
    run = _adapter_run(tmp_path, base, ["q", "down"])
    export_hf(run, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="adapter run"):  # the plain exporter refuses it
        hf.export_hf(run, tmp_path / "plain")
    settings = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
    # the MLP's `output.dense` suffix would also catch `attention.output.dense`: full names
    assert "bert.encoder.layer.1.attention.self.value" in settings["target_modules"]
    assert "bert.encoder.layer.1.output.dense" in settings["target_modules"]
    assert len(settings["target_modules"]) == 2 * 4
    hf_base = BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    theirs = PeftModel.from_pretrained(hf_base, tmp_path / "hf" / "adapter").eval()
    _, ours, _ = load_run(run)
    ids, mask = (
        random_ids(bpe_tokenizer.vocab_size, (3, 24), seed=7),
        right_padding([24, 15, 6], 24),
    )
    types = (torch.arange(24) >= 10).long().expand(3, 24).clone()
    with torch.no_grad():
        expected = ours(ids, types, mask)
        got = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(got.prediction_logits[real], expected.mlm[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.seq_relationship_logits, expected.nsp, atol=ATOL, rtol=0)


def test_peft_config_uses_short_targets_and_fan_in_fan_out_for_gpt2(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    base = _base_run(tmp_path, bpe_tokenizer, pos_emb="learned", bias=True)
    export_hf(_adapter_run(tmp_path, base, ["q", "o"]), tmp_path / "hf")
    adapter = tmp_path / "hf" / "adapter"
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["target_modules"] == ["attn.c_attn", "attn.c_proj"]
    assert settings["fan_in_fan_out"] is True
    assert settings["task_type"] == "CAUSAL_LM"
    assert (settings["peft_type"], settings["r"], settings["lora_alpha"]) == ("LORA", 4, 8.0)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()


def test_adapter_of_some_blocks_only_names_full_modules(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    base = _base_run(tmp_path, bpe_tokenizer, pos_emb="rope")
    export_hf(_adapter_run(tmp_path, base, ["blocks.1.attn.qkv"]), tmp_path / "hf")
    settings = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
    assert settings["target_modules"] == ["gpt_neox.layers.1.attention.query_key_value"]


def test_adapter_with_task_heads_is_refused_and_nothing_is_written(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    base = _base_run(tmp_path, bpe_tokenizer, pos_emb="learned")
    run = _adapter_run(tmp_path, base, ["q"], heads=("ln_f",))
    with pytest.raises(CheckpointError, match="task heads"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
