"""`--dtype auto` for generation: bf16 only where this CPU decodes faster in it, measured once
and cached per CPU model, torch version and shape."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.jobs import generate as generate_job
from lmforge.model import GPT
from lmforge.rundir.kernel_cache import kernel_cache


def _model() -> GPT:
    return GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))


@pytest.mark.parametrize(
    ("seconds", "choice"),
    [
        ({"float32": 1.0, "bfloat16": 0.5}, "bfloat16"),  # AMX: half the bytes, twice as fast
        ({"float32": 1.0, "bfloat16": 0.9}, "float32"),  # faster, but not by 1.3x
        ({"float32": 1.0, "bfloat16": 100.0}, "float32"),  # bf16 emulated
    ],
)
def test_the_measured_faster_dtype_is_chosen_and_cached(
    seconds: dict, choice: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def timing(shape: tuple, dtype: torch.dtype) -> float:
        calls.append((shape, dtype))
        return seconds[str(dtype).removeprefix("torch.")]

    monkeypatch.setattr(generate_job, "decode_seconds", timing)
    cache = tmp_path / "kernels.json"
    assert generate_job.inference_dtype(_model(), cache) == choice
    assert {shape for shape, _ in calls} == {(64, 16)}  # the largest weight: the head
    assert generate_job.inference_dtype(_model(), cache) == choice
    assert len(calls) == 2  # the second load read the cache instead of timing again
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["dtype"] == choice


def test_a_damaged_cache_is_measured_again(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "kernels.json"
    cache.write_text("{not json")
    monkeypatch.setattr(generate_job, "decode_seconds", lambda shape, dtype: 1.0)
    assert generate_job.inference_dtype(_model(), cache) == "float32"
    assert kernel_cache(cache).entries  # rewritten whole


def test_the_cache_lives_in_the_users_cache_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(generate_job, "decode_seconds", lambda shape, dtype: 1.0)
    generate_job.inference_dtype(_model())
    assert (tmp_path / "lmforge" / "kernels.json").is_file()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_casting_for_generation_keeps_the_rope_rotations_complex(dtype: str) -> None:
    """Module.to(float32) turns RoPE's complex rotations real (cosines only): the logits of a
    loaded run then drifted by ~0.8 from the run's own. The cast leaves complex buffers be."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="rope")
    model, reference = GPT(cfg).eval(), GPT(cfg).eval()
    reference.load_state_dict(model.state_dict())
    cast = generate_job.cast_floating(model, getattr(torch, dtype))
    assert cast.rope_rotations.is_complex()
    assert cast.tok_emb.weight.dtype == getattr(torch, dtype)
    assert cast.lm_head.weight is cast.tok_emb.weight  # tying survives the cast
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = cast(ids).float(), reference(ids)
    tolerance = 0.0 if dtype == "float32" else 0.1
    assert (got - want).abs().max().item() <= tolerance


def test_a_rope_run_loaded_for_generation_computes_what_the_run_computes(tmp_path: Path) -> None:
    from lmforge.config import RunConfig
    from lmforge.rundir import checkpoint as ckpt
    from lmforge.rundir import layout
    from lmforge.rundir.load import build_model, load_run
    from lmforge.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_char(["abcdefghij klmnop"])
    cfg = RunConfig(
        model=ModelConfig(
            vocab_size=tokenizer.vocab_size,
            block_size=16,
            n_layer=1,
            n_head=2,
            n_embd=16,
            pos_emb="rope",
        )
    )
    torch.manual_seed(0)
    ckpt.write_run_files(tmp_path, cfg, tokenizer)
    ckpt.save_weights(build_model(cfg), tmp_path / layout.MODEL_FILE)
    _, reference, _ = load_run(tmp_path, "latest")
    loaded, _ = generate_job.load_for_generation(tmp_path, dtype="float32")
    ids = torch.tensor([tokenizer.encode("abc def ghij")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), reference(ids))
