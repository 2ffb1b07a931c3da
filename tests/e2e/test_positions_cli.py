"""model.pos_emb=sincos through the command line: it trains, saves, loads, generates and
evaluates, and the loaded model computes with its sinusoids."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.rundir.load import load_run

from .conftest import TRAIN_SETS


def _sets_with(steps: int) -> list[str]:
    return [s.replace("train.max_steps=20", f"train.max_steps={steps}") for s in TRAIN_SETS]


def test_a_sincos_run_trains_loads_generates_and_evaluates(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "sincos"
    data = trained_run.parent / "data"
    sets = [*_sets_with(6), "--set", "model.pos_emb=sincos"]
    assert main(["pretrain", "--data", str(data), "--out", str(run), *sets]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["pos_emb"] == "sincos"
    _, model, tokenizer = load_run(run)
    assert model.pos_emb is None
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat")])
    with torch.no_grad():
        logits = model(ids)
        model.sincos_positions.zero_()  # the table is really used by the loaded model
        assert not torch.allclose(model(ids), logits, atol=1e-5)
    assert main(["-q", "generate", str(run), "--prompt", "the cat", "--max-new-tokens", "5"]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert "perplexity" in capsys.readouterr().out
