"""Bad Hugging Face inputs fail with a CheckpointError that names the problem."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from lmforge.config import ModelConfig, RunConfig
from lmforge.errors import CheckpointError
from lmforge.interop.hf import export_hf, import_hf
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.load import build_model, load_run
from lmforge.tokenizer import Tokenizer


def _gpt2_dir(out: Path, tokenizer: Tokenizer, n_embd: int = 32) -> None:
    tokenizer.save(out.parent / "tok.json")
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=32, n_embd=n_embd, n_layer=1, n_head=2
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    GPT2TokenizerFast(tokenizer_file=str(out.parent / "tok.json")).save_pretrained(out)


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    supported = r"gpt2.*gpt_neox.*bert.*llama.*mistral.*qwen2.*qwen3"
    with pytest.raises(CheckpointError, match=rf"unsupported architecture 't5'.*{supported}"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


class _Payload:
    """Unpickling this would run code: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_bin_that_needs_unpickling_is_refused_and_never_executed(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    _gpt2_dir(tmp_path / "hf", bpe_tokenizer)
    (tmp_path / "hf" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(tmp_path / "hf" / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"transformer.wte.weight": _Payload(marker)}, handle, protocol=2)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*never unpickles"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_a_clean_bin_loads(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    _gpt2_dir(tmp_path / "hf", bpe_tokenizer)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(tensors, tmp_path / "hf" / "pytorch_model.bin")
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    _, model, _ = load_run(tmp_path / "run")
    assert torch.equal(model.tok_emb.weight, tensors["transformer.wte.weight"])


def test_weights_of_another_shape_name_the_tensor_and_both_shapes(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    _gpt2_dir(tmp_path / "hf", bpe_tokenizer, n_embd=32)
    _gpt2_dir(tmp_path / "other", bpe_tokenizer, n_embd=64)
    (tmp_path / "hf" / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    vocab = bpe_tokenizer.vocab_size
    with pytest.raises(
        CheckpointError, match=rf"transformer.wte.weight.*\({vocab}, 64\).*\({vocab}, 32\)"
    ):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


def test_missing_weights_and_bad_directories(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        import_hf(str(tmp_path / "nowhere"), tmp_path / "run")
    _gpt2_dir(tmp_path / "hf", bpe_tokenizer)
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")


def test_import_does_not_overwrite_without_permission(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    _gpt2_dir(tmp_path / "hf", bpe_tokenizer)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="--overwrite"):
        import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_grouped_query_attention_cannot_be_exported(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    cfg = RunConfig(
        model=ModelConfig(
            vocab_size=bpe_tokenizer.vocab_size, n_layer=1, n_head=4, n_kv_head=2, n_embd=32
        )
    )
    run = tmp_path / "run"
    ckpt.write_run_files(run, cfg, bpe_tokenizer)
    ckpt.save_weights(build_model(cfg), run / layout.MODEL_FILE)
    with pytest.raises(CheckpointError, match="n_kv_head == n_head"):
        export_hf(run, tmp_path / "hf")


@pytest.mark.parametrize(
    "text",
    ['{"n_embd": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000, "\xff\xfe not utf-8"],
)
def test_a_config_json_python_cannot_parse_is_a_checkpoint_error(tmp_path: Path, text: str) -> None:
    """Found by the fuzz tests: an integer over Python's 4300-digit limit, nesting deeper than
    the recursion limit and bytes that are not UTF-8 used to escape as raw exceptions."""
    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match="cannot read"):
        import_hf(tmp_path, tmp_path / "out")
