"""The Llama family — Llama (tied and untied, with and without Llama 3 RoPE scaling), Qwen2
(q/k/v biases), Qwen3 (q/k norm) and Mistral — imported from random-initialised transformers
twins: equal logits with and without padding, equal greedy text, equal after export."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lmforge.config import SamplingConfig
from lmforge.errors import CheckpointError
from lmforge.generation.loop import generate_tokens
from lmforge.interop.hf import export_hf, import_hf
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer

from .twins import hf_greedy, random_ids, right_padding, scaled_init, tiny_run

ATOL = 1e-4
SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 56,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 96,
}
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 50000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
VARIANTS = {
    "llama": (LlamaForCausalLM, LlamaConfig, {"tie_word_embeddings": False}),
    "llama-tied-llama3": (
        LlamaForCausalLM,
        LlamaConfig,
        {"tie_word_embeddings": True, "rope_parameters": LLAMA3},
    ),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {"tie_word_embeddings": True}),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 16, "tie_word_embeddings": False}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
}


def _save_twin(name: str, out: Path, tokenizer: Tokenizer, tmp: Path) -> torch.nn.Module:
    cls, config_cls, extra = VARIANTS[name]
    torch.manual_seed(0)
    model = cls(config_cls(vocab_size=tokenizer.vocab_size, **SHAPE, **extra)).eval()
    scaled_init(model)
    model.save_pretrained(out)
    tokenizer.save(tmp / "tok.json")
    PreTrainedTokenizerFast(tokenizer_file=str(tmp / "tok.json")).save_pretrained(out)
    return model


@pytest.fixture(params=list(VARIANTS))
def imported(request: pytest.FixtureRequest, tmp_path: Path, bpe_tokenizer: Tokenizer) -> tuple:
    hf = _save_twin(request.param, tmp_path / "hf", bpe_tokenizer, tmp_path)
    summary = import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert summary["architecture"] == hf.config.model_type
    _, ours, _ = load_run(tmp_path / "run")
    return hf, ours, tmp_path


def test_logits_match_with_and_without_padding(imported: tuple) -> None:
    hf, ours, _ = imported
    ids, mask = random_ids(hf.config.vocab_size, (3, 24)), right_padding([24, 15, 6], 24)
    with torch.no_grad():
        plain = (hf(ids).logits, ours(ids))
        padded = (hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask))
    assert plain[0].abs().max() > 1.0  # large enough that a wrong layout shows
    torch.testing.assert_close(plain[1], plain[0], atol=ATOL, rtol=0)
    real = mask.bool()
    torch.testing.assert_close(padded[1][real], padded[0][real], atol=ATOL, rtol=0)


def test_left_padded_rows_match(imported: tuple) -> None:
    hf, ours, _ = imported
    ids = random_ids(hf.config.vocab_size, (2, 16), seed=1)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :7] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=ATOL, rtol=0)


def test_greedy_64_tokens_and_cached_decoding(imported: tuple) -> None:
    hf, ours, _ = imported
    prompt = random_ids(hf.config.vocab_size, (1, 12), seed=3)
    with torch.no_grad():
        theirs = hf_greedy(hf, prompt)
        full = ours(torch.tensor([prompt[0].tolist() + theirs]))[0]
        cache = ours.new_kv_cache(1)
        stepped = [ours(prompt, kv_cache=cache)[0]]
        stepped += [ours(torch.tensor([[t]]), kv_cache=cache)[0] for t in theirs]
    sampling = SamplingConfig(max_new_tokens=64, temperature=0)
    mine = list(generate_tokens(ours, prompt[0].tolist(), sampling))
    assert len(theirs) == 64
    assert mine == theirs
    torch.testing.assert_close(torch.cat(stepped)[:-1], full[:-1], atol=1e-5, rtol=0)


def test_export_gives_transformers_back_the_same_model(imported: tuple) -> None:
    hf, _, tmp = imported
    export_hf(tmp / "run", tmp / "back")
    again = AutoModelForCausalLM.from_pretrained(tmp / "back").eval()
    # a Mistral without a sliding window is exactly a Llama, which is what it exports as
    expected_class = LlamaForCausalLM if isinstance(hf, MistralForCausalLM) else type(hf)
    assert type(again) is expected_class
    ids, mask = random_ids(hf.config.vocab_size, (2, 20), seed=5), right_padding([20, 9], 20)
    with torch.no_grad():
        expected, got = hf(ids, attention_mask=mask).logits, again(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


def test_llama3_rope_scaling_changes_the_model(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    """The scaling is not ignored: the same weights without it give other logits."""
    scaled = tiny_run(tmp_path / "a", bpe_tokenizer, **_llama_keys(), rope_scaling=LLAMA3_OURS)
    plain = tiny_run(tmp_path / "b", bpe_tokenizer, **_llama_keys())
    ids = random_ids(bpe_tokenizer.vocab_size, (1, 48), seed=6)
    with torch.no_grad():
        a, b = load_run(scaled)[1](ids), load_run(plain)[1](ids)
    assert float((a - b)[0, 30:].abs().max()) > 1e-2  # far positions turn differently
    torch.testing.assert_close(a[0, :1], b[0, :1])  # position 0 never turns


LLAMA3_OURS = {k: v for k, v in LLAMA3.items() if k != "rope_theta"}


def _llama_keys() -> dict:
    return {"norm": "rmsnorm", "activation": "swiglu", "pos_emb": "rope", "bias": False}


@pytest.mark.parametrize(
    ("model", "architecture"),
    [
        ({**_llama_keys(), "tie_weights": False, "n_kv_head": 2}, "LlamaForCausalLM"),
        ({**_llama_keys(), "qkv_bias": True}, "Qwen2ForCausalLM"),
        ({**_llama_keys(), "qk_norm": True, "head_size": 16}, "Qwen3ForCausalLM"),
        ({**_llama_keys(), "bias": True, "rope_scaling": LLAMA3_OURS}, "LlamaForCausalLM"),
    ],
)
def test_our_llama_family_runs_export_to_the_right_class(
    tmp_path: Path, bpe_tokenizer: Tokenizer, model: dict, architecture: str
) -> None:
    run = tiny_run(tmp_path / "ours", bpe_tokenizer, **model)
    export_hf(run, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == architecture
    _, ours, _ = load_run(run)
    ids, mask = random_ids(bpe_tokenizer.vocab_size, (2, 40), seed=4), right_padding([40, 17], 40)
    with torch.no_grad():
        expected, got = ours(ids, attention_mask=mask), theirs(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"norm": "layernorm", "activation": "swiglu", "pos_emb": "rope"}, "no transformers"),
        ({"norm": "rmsnorm", "activation": "gelu", "pos_emb": "rope"}, "no transformers"),
        ({**_llama_keys(), "activation": "relu2"}, "no transformers"),
    ],
)
def test_export_refuses_what_no_architecture_holds(
    tmp_path: Path, bpe_tokenizer: Tokenizer, model: dict, problem: str
) -> None:
    run = tiny_run(tmp_path / "ours", bpe_tokenizer, **model)
    with pytest.raises(CheckpointError, match=problem):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_sliding_window_shorter_than_the_context_is_refused(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    cls, config_cls, _ = VARIANTS["mistral"]
    model = cls(config_cls(vocab_size=bpe_tokenizer.vocab_size, **SHAPE, sliding_window=32))
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="sliding window of 32 tokens"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


def test_missing_and_extra_tensors_are_named(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    from safetensors.torch import load_file, save_file

    hf = _save_twin("qwen3", tmp_path / "hf", bpe_tokenizer, tmp_path)
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors.*layers\.1\.self_attn\.k_norm"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert hf.config.model_type == "qwen3"


def test_llama_nano_config_pretrains_and_exports_as_llama(
    tmp_path: Path, prepared_dir: Path
) -> None:
    """configs/llama-nano-cpu.yaml: the family from scratch, through the real CLI."""
    from lmforge.cli.main import main

    config = Path(__file__).resolve().parents[2] / "configs" / "llama-nano-cpu.yaml"
    sets = ["train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1"]
    sets += ["train.progress=false", "model.block_size=32", "train.batch_size=4"]
    args = ["-q", "pretrain", "--config", str(config), "--data", str(prepared_dir)]
    assert (
        main([*args, "--out", str(tmp_path / "run"), *(x for s in sets for x in ("--set", s))]) == 0
    )
    export_hf(tmp_path / "run", tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    cfg, ours, _ = load_run(tmp_path / "run")
    assert (cfg.model.norm, cfg.model.activation, cfg.model.kv_heads) == ("rmsnorm", "swiglu", 2)
    ids = random_ids(cfg.model.vocab_size, (2, 32), seed=8)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=ATOL, rtol=0)


def test_extra_tensors_are_named(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    from safetensors.torch import load_file, save_file

    _save_twin("llama", tmp_path / "hf", bpe_tokenizer, tmp_path)
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(56, 32)  # a layer too many
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 tensors.*model\.layers\.2\.mlp\.up_proj"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


def test_a_tokenizer_of_another_vocabulary_is_refused(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    _save_twin("qwen2", tmp_path / "hf", bpe_tokenizer, tmp_path)
    other = Tokenizer.train_bpe(["some other text entirely"] * 10, vocab_size=300)
    other.save(tmp_path / "hf" / "tokenizer.json")
    with pytest.raises(
        CheckpointError, match=r"tokenizer has \d+ tokens but the model expects 400"
    ):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_sharded_checkpoints_import(
    tmp_path: Path, bpe_tokenizer: Tokenizer, dtype: torch.dtype
) -> None:
    """Weights saved in bf16 / fp16 over several shards (an index file) import exactly: our
    fp32 model computes what theirs computes on the same weights upcast."""
    hf = _save_twin("qwen3", tmp_path / "full", bpe_tokenizer, tmp_path)
    hf.to(dtype).save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf" / name).write_bytes((tmp_path / "full" / name).read_bytes())
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    _, ours, _ = load_run(tmp_path / "run")
    # their model from the same files, in fp32 (its rotary table recomputed, not cast back)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = random_ids(hf.config.vocab_size, (2, 20), seed=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=ATOL, rtol=0)
