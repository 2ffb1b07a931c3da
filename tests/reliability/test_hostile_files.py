"""Hostile files: pickles that would run code, safetensors headers that claim terabytes,
symbolic links planted to redirect writes, and output directories that are not empty."""

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.errors import CheckpointError, LMForgeError
from lmforge.interop.hf import _load_bin
from lmforge.model.gpt import GPT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import append_text, staged_directory, write_text_atomic
from lmforge.train.optim import build_optimizer
from lmforge.train.optimizer_state import save_optimizer_state
from lmforge.train.trainer import Trainer

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=61)


class WritesAFile:
    """Unpickling this calls open(marker, "w"): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _trained_state(model: torch.nn.Module, step: int = 3) -> dict[str, Any]:
    """A Trainer's full state after one optimizer step: tensors, tuples, integer keys."""
    cfg = TrainConfig(max_steps=10, warmup_steps=0, progress=False)
    optimizer = build_optimizer(model, cfg)
    model(torch.randint(0, TINY.vocab_size, (2, 8))).sum().backward()
    optimizer.step()
    trainer = Trainer(model, optimizer, lambda s, m: None, cfg, lambda m, b: None)
    trainer.state.step = step
    return trainer.state_dict()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b or (a != a and b != b)  # nan


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY)


def test_trainer_state_round_trips_without_pickle(tmp_path: Path, model: GPT) -> None:
    state = _trained_state(model)
    assert any(isinstance(k, int) for k in state["optimizer"]["state"])
    final = ckpt.save_checkpoint(tmp_path, model, state, True, keep_last=2)
    loaded = ckpt.load_trainer_state(final)
    assert _same(state, loaded)
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    names = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert layout.STATE_FILE in names
    assert not {n for n in names if n.endswith((".pt", ".bin", ".pkl"))}


def test_no_file_of_a_checkpoint_is_a_pickle(tmp_path: Path, model: GPT) -> None:
    state = _trained_state(model)
    staging = ckpt.fresh_staging_dir(tmp_path, 3)
    optimizer = build_optimizer(model, TrainConfig(max_steps=10, warmup_steps=0))
    save_optimizer_state(model, optimizer, staging / layout.STATE_DIR / layout.OPTIMIZER_DIR)
    ckpt.save_checkpoint(tmp_path, model, {**state, "optimizer": None}, True, 2, staged=True)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80"), path  # pickle protocol 2+
        assert head != b"PK\x03\x04", path  # torch.save's zip container


def test_an_old_state_pt_still_resumes(tmp_path: Path, model: GPT) -> None:
    state = _trained_state(model)
    final = ckpt.save_checkpoint(tmp_path, model, state, False, keep_last=2)
    (final / layout.STATE_DIR / layout.STATE_FILE).unlink()
    torch.save(state, final / layout.STATE_DIR / layout.LEGACY_STATE_FILE)  # as lmforge did
    assert _same(state, ckpt.load_trainer_state(final))


def test_a_pickled_payload_in_state_pt_is_refused_and_runs_nothing(
    tmp_path: Path, model: GPT
) -> None:
    final = ckpt.save_checkpoint(tmp_path, model, _trained_state(model), False, keep_last=2)
    (final / layout.STATE_DIR / layout.STATE_FILE).unlink()
    marker = tmp_path / "pwned"
    torch.save({"state": WritesAFile(marker)}, final / layout.STATE_DIR / layout.LEGACY_STATE_FILE)
    with pytest.raises(CheckpointError, match="never unpickles"):
        ckpt.load_trainer_state(final)
    assert not marker.exists()


def test_a_pickled_payload_in_pytorch_model_bin_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"wte.weight": WritesAFile(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        _load_bin(tmp_path / "pytorch_model.bin")
    assert not marker.exists()


def _safetensors(path: Path, header: dict[str, Any], length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + b"\0" * 64)


@pytest.mark.parametrize(
    "claim",
    [
        "header-length",  # an 8-byte length of 1 TiB
        "tensor-size",  # a tensor of 10^12 floats in a 64-byte file
    ],
)
def test_a_safetensors_file_claiming_terabytes_is_refused(
    tmp_path: Path, model: GPT, claim: str
) -> None:
    path = tmp_path / layout.MODEL_FILE
    huge = {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4 * 10**12]}
    _safetensors(path, {"tok_emb.weight": huge}, 2**40 if claim == "header-length" else None)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_weights(model, path)
    (tmp_path / layout.STATE_DIR).mkdir()
    path.rename(tmp_path / layout.STATE_DIR / layout.STATE_FILE)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_trainer_state(tmp_path)


def test_weights_of_another_shape_are_refused_before_any_tensor_is_read(
    tmp_path: Path, model: GPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    bigger = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=61))
    ckpt.save_weights(bigger, tmp_path / layout.MODEL_FILE)
    monkeypatch.setattr(ckpt, "load_file", lambda *a: pytest.fail("tensors were read"))
    with pytest.raises(CheckpointError, match="has shape"):
        ckpt.load_weights(model, tmp_path / layout.MODEL_FILE)


def test_a_link_planted_at_a_file_name_is_replaced_not_followed(tmp_path: Path, model: GPT) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / layout.MODEL_FILE).symlink_to(outside / "victim")
    (run / layout.CONFIG_FILE).symlink_to(outside / "victim")
    ckpt.save_checkpoint(run, model, _trained_state(model), False, keep_last=2)
    write_text_atomic(run / layout.CONFIG_FILE, "{}")
    assert (outside / "victim").read_text() == "precious"
    assert not (run / layout.MODEL_FILE).is_symlink()
    assert not (run / layout.CONFIG_FILE).is_symlink()


@pytest.mark.parametrize("name", [layout.STATE_DIR, layout.CHECKPOINTS_DIR, layout.BEST_DIR])
def test_a_linked_directory_inside_a_run_is_refused(tmp_path: Path, model: GPT, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(outside, target_is_directory=True)
    with pytest.raises(LMForgeError, match="symbolic link"):
        ckpt.save_checkpoint(run, model, _trained_state(model), True, keep_last=2)
    assert list(outside.iterdir()) == []
    assert [p.name for p in run.rglob("*") if ".tmp" in p.name] == []


def test_metrics_are_never_appended_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.log"
    outside.write_text("precious\n")
    (tmp_path / layout.METRICS_FILE).symlink_to(outside)
    with pytest.raises(LMForgeError, match="symbolic link"):
        append_text(tmp_path / layout.METRICS_FILE, '{"step": 1}\n')
    assert outside.read_text() == "precious\n"
    dangling = tmp_path / "run"
    dangling.mkdir()
    (dangling / layout.METRICS_FILE).symlink_to(tmp_path / "created-outside")
    with pytest.raises(LMForgeError, match="symbolic link"):
        append_text(dangling / layout.METRICS_FILE, '{"step": 1}\n')
    assert not (tmp_path / "created-outside").exists()


def test_a_non_empty_output_is_never_replaced_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    for target in (out, link):
        with pytest.raises(LMForgeError, match="--overwrite"), staged_directory(target, False):
            pytest.fail("the block must not run")
    assert (out / "keep.txt").read_text() == "mine"
    with staged_directory(link, True) as staged:  # --overwrite replaces the link, not its target
        (staged / "new.txt").write_text("new")
    assert (out / "keep.txt").read_text() == "mine"
    assert not link.is_symlink()
    assert sorted(p.name for p in link.iterdir()) == ["new.txt"]


def test_a_run_directory_named_through_a_link_is_written_inside_its_target(
    tmp_path: Path, model: GPT
) -> None:
    """The rule: the user may name the run directory through a link; links inside it are not
    followed (refused or replaced)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "named").symlink_to(real, target_is_directory=True)
    ckpt.save_checkpoint(tmp_path / "named", model, _trained_state(model), True, keep_last=2)
    assert (real / layout.MODEL_FILE).is_file()
    assert ckpt.load_trainer_state(ckpt.list_checkpoints(real)[-1])["state"]["step"] == 3
