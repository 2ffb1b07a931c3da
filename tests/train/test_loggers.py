"""train.logger: the same records as metrics.jsonl reach TensorBoard and wandb (offline)."""

import json
import sys
from pathlib import Path

import pytest

from lmforge.config import load_config
from lmforge.errors import LMForgeError
from lmforge.jobs.pretrain import pretrain, resume
from lmforge.rundir import layout
from lmforge.train.loggers import open_sink, scalars

SETS = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=16",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.eval_interval=3",
    "train.checkpoint_interval=3",
    "train.eval_batches=1",
    "train.warmup_steps=1",
    "train.log_interval=1",
    "train.progress=false",
]


def test_records_become_tagged_scalars() -> None:
    record = {"step": 3, "loss": 2.5, "lr": 1e-3, "val_loss": 2.0, "val_accuracy": 1, "x": "a"}
    assert scalars(record) == {
        "train/loss": 2.5,
        "train/lr": 1e-3,
        "val/loss": 2.0,
        "val/accuracy": 1.0,
    }
    assert scalars({"step": 1, "stopped": True}) == {}


def _metrics(run: Path) -> list[dict]:
    lines = (run / layout.METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / layout.LOGGER_DIR / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_gets_every_metric_and_a_resume_does_not_double_it(
    prepared_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    pretrain(
        load_config(None, [*SETS, "train.logger=tensorboard", f"data.dir={prepared_dir}"]), run
    )
    got = _tensorboard_scalars(run)
    losses = [(r["step"], r["loss"]) for r in _metrics(run) if "loss" in r]
    assert [s for s, _ in got["train/loss"]] == [s for s, _ in losses]
    assert [v for _, v in got["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    assert [s for s, _ in got["val/loss"]] == [0, 3, 6]
    # killed after step 3's checkpoint, resumed: the curve has each step once
    (run / layout.CHECKPOINTS_DIR / "step_0000006").rename(tmp_path / "gone")
    resume(run, [])
    steps = [s for s, _ in _tensorboard_scalars(run)["train/loss"]]
    assert steps == list(range(1, 7))


def test_wandb_offline_run_is_written_without_an_account(
    prepared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    pretrain(load_config(None, [*SETS, "train.logger=wandb", f"data.dir={prepared_dir}"]), run)
    offline = list((run / layout.LOGGER_DIR / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    assert list(offline[0].glob("*.wandb"))  # the run's records, for `wandb sync`


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((data, step))

    def finish(self) -> None:
        self.finished = True


def test_wandb_sink_logs_each_record_at_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sink sends, checked without wandb's service: init's arguments and each log."""
    calls, fake = {}, _FakeRun()

    class FakeWandb:
        Settings = dict

        @staticmethod
        def init(**kwargs: object) -> _FakeRun:
            calls.update(kwargs)
            return fake

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sink = open_sink("wandb", tmp_path / "my run", 0, {"train": {"lr": 1e-3}})
    sink.log({"step": 2, "loss": 1.5})
    sink.close()
    assert calls["mode"] == "offline"
    assert calls["config"] == {"train": {"lr": 1e-3}}
    assert calls["id"] == "my-run"
    assert calls["resume"] == "allow"
    assert fake.logged == [({"train/loss": 1.5}, 2)]
    assert fake.finished


def test_a_missing_logger_package_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(LMForgeError, match=r"pip install 'lmforge\[wandb\]'"):
        open_sink("wandb", tmp_path, 0, {})
    assert open_sink("none", tmp_path, 0, {}) is None
