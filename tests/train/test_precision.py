"""train.dtype=auto: bf16 autocast only where it measures faster, decided once and recorded."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.jobs.pretrain import pretrain, resume
from lmforge.jobs.session import resolve_precision
from lmforge.rundir import layout
from lmforge.train.distributed import DistContext
from lmforge.train.runtime import choose_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("speeds", "choice"),
    [
        ({"float32": 300.0, "bfloat16": 3.0}, "float32"),  # bf16 emulated: ~100x slower
        ({"float32": 300.0, "bfloat16": 320.0}, "float32"),  # faster, but not by 10%
        ({"float32": 300.0, "bfloat16": 900.0}, "bfloat16"),  # AMX
    ],
)
def test_the_faster_precision_is_chosen(speeds: dict, choice: str) -> None:
    widths = []
    chosen, figures = choose_precision(CPU, 64, lambda width: widths.append(width) or speeds)
    assert (chosen, figures) == (choice, speeds)
    assert widths == [64]  # measured at the model's width


def test_only_auto_is_resolved_and_once() -> None:
    calls = []

    def measure(width: int) -> dict:
        calls.append(width)
        return {"float32": 1.0, "bfloat16": 5.0}

    auto = load_config(None, ["train.dtype=auto", "model.n_embd=96", "model.n_head=4"])
    resolved = resolve_precision(auto, CPU, DistContext(), measure)
    assert resolved.train.dtype == "bfloat16"
    assert calls == [96]
    pinned = load_config(None, ["train.dtype=float32"])
    assert resolve_precision(pinned, CPU, DistContext(), measure) is pinned
    assert calls == [96]


def test_the_choice_is_recorded_and_resume_keeps_it(prepared_dir: Path, tmp_path: Path) -> None:
    sets = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16"]
    sets += ["train.max_steps=4", "train.eval_interval=2", "train.checkpoint_interval=2"]
    sets += ["train.eval_batches=1", "train.warmup_steps=1", "train.progress=false"]
    sets += ["train.batch_size=4", "train.dtype=auto", f"data.dir={prepared_dir}"]
    run = tmp_path / "run"
    pretrain(load_config(None, sets), run)
    recorded = json.loads((run / layout.CONFIG_FILE).read_text())["train"]["dtype"]
    assert recorded in ("float32", "bfloat16")  # what this CPU measured faster, not "auto"
    for tensor in load_file(str(run / layout.MODEL_FILE)).values():
        assert tensor.dtype == torch.float32  # master weights stay fp32 under autocast
    resume(run, ["train.max_steps=6"])  # no new measurement: the run's own choice
    assert json.loads((run / layout.CONFIG_FILE).read_text())["train"]["dtype"] == recorded


def test_bf16_autocast_training_keeps_fp32_weights(prepared_dir: Path, tmp_path: Path) -> None:
    sets = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16"]
    sets += ["train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1"]
    sets += ["train.warmup_steps=1", "train.progress=false", "train.batch_size=4"]
    sets += ["train.dtype=bfloat16", f"data.dir={prepared_dir}"]
    summary = pretrain(load_config(None, sets), tmp_path / "run")
    assert summary["steps"] == 2
    weights = load_file(str(tmp_path / "run" / layout.MODEL_FILE))
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.parametrize(("lone_bf16", "timed"), [(0.01, False), (0.9, True)])
def test_the_model_is_timed_only_where_bf16_products_are_not_hopeless(
    monkeypatch: pytest.MonkeyPatch, lone_bf16: float, timed: bool
) -> None:
    """On an AVX2 CPU a bf16 training pass of the model takes minutes to time and cannot win:
    a lone product's speed rules it out first."""
    from lmforge.jobs import session
    from lmforge.train import runtime

    monkeypatch.setattr(
        runtime, "precision_speeds", lambda w: {"float32": 1.0, "bfloat16": lone_bf16}
    )
    models = []
    monkeypatch.setattr(
        runtime,
        "model_speeds",
        lambda model, rows, length: models.append(rows) or {"float32": 1.0, "bfloat16": 2.0},
    )
    cfg = load_config(None, ["train.dtype=auto", "model.vocab_size=64"])
    resolved = resolve_precision(cfg, CPU, DistContext(), session._model_calibration(cfg))
    assert bool(models) == timed
    assert resolved.train.dtype == ("bfloat16" if timed else "float32")
