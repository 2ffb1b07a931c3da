"""A run killed before its first checkpoint: --resume starts it over from its saved config
(with a notice) and ends where a fresh run of that config ends; a fresh run into it without
--overwrite is refused with that way on."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli.main import main

from .conftest import TINY_SETS, prepare_toy_corpus

SETS = [
    *TINY_SETS,
    *("--set", "train.max_steps=12", "--set", "train.eval_interval=6"),
    *("--set", "train.checkpoint_interval=6"),
]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data and a fresh, uninterrupted 12-step run of SETS."""
    root = tmp_path_factory.mktemp("restart")
    prepare_toy_corpus(root)
    assert (
        main(["pretrain", "--data", str(root / "data"), "--out", str(root / "fresh"), *SETS]) == 0
    )
    return root / "fresh"


def _killed_before_checkpoint(fresh: Path, out: Path) -> Path:
    """What a kill before the first checkpoint leaves: config, tokenizer, the first records."""
    out.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(fresh / name, out / name)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 0, "val_loss": 99.0}) + "\n")
    (out / "checkpoints" / "step_0000006.tmp").mkdir(parents=True)  # a save cut short
    return out


def test_resume_starts_it_over_and_ends_like_a_fresh_run(
    fresh: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _killed_before_checkpoint(fresh, tmp_path / "run")
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert "stopped before its first checkpoint; starting it over from step 0" in caplog.text
    got, want = (load_file(str(d / "model.safetensors")) for d in (run, fresh))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("val_loss") != 99.0 for r in records)  # the killed attempt's are gone
    assert [r["step"] for r in records if "val_loss" in r] == [0, 6, 12]


def test_a_fresh_run_into_it_is_refused_naming_resume(
    fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _killed_before_checkpoint(fresh, tmp_path / "run")
    data = json.loads((fresh / "config.json").read_text())["data"]["dir"]
    code = main(["pretrain", "--data", data, "--out", str(run), *SETS])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--resume {run}" in err
    assert "--overwrite" in err
    assert (run / "metrics.jsonl").is_file()  # nothing removed


def test_a_run_with_weights_but_no_checkpoint_is_not_restarted(
    fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An imported or merged run holds weights and no checkpoint: --resume must not wipe it."""
    run = tmp_path / "imported"
    run.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        shutil.copy(fresh / name, run / name)
    code = main(["pretrain", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no complete checkpoint to resume from" in err
