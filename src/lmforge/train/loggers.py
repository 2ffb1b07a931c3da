"""Where else a run's metrics go (train.logger): TensorBoard or Weights & Biases, beside the
metrics.jsonl and loss.png every run writes.

Each record the tracker writes becomes scalars at its step: training records under `train/`
(loss, lr, grad_norm, tokens_per_s, ...), evaluation records under `val/` (val_loss ->
val/loss, val_accuracy -> val/accuracy, ...). Both libraries are optional extras.
"""

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

from lmforge.errors import LMForgeError
from lmforge.rundir.layout import LOGGER_DIR


class MetricSink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers as tagged scalars: val_x -> val/x, anything else -> train/x."""
    tagged = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        tag = f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"
        tagged[tag] = float(value)
    return tagged


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LMForgeError(
            f"train.logger={extra} needs the {extra} package: pip install 'lmforge[{extra}]' "
            "(or set train.logger=none)"
        ) from None


class TensorBoardSink:
    """Event files in RUN/logs/tensorboard (`tensorboard --logdir RUN/logs`). A resumed
    run purges the events after its checkpoint's step, so the curves have no doubled tail."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        _require(kind := "tensorboard", kind)
        from torch.utils.tensorboard import SummaryWriter

        purge = start_step + 1 if start_step > 0 else None  # steps after the checkpoint
        self.writer = SummaryWriter(str(run_dir / LOGGER_DIR / kind), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("step", 0))

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run in RUN/logs/wandb, offline unless WANDB_MODE says otherwise (no
    account needed; `wandb sync RUN/logs/wandb/offline-run-*` uploads it later). A resumed run
    continues the same wandb run (its id is the run directory's)."""

    def __init__(self, run_dir: Path, start_step: int, config: dict[str, Any]) -> None:
        wandb = _require(kind := "wandb", kind)
        (run_dir / LOGGER_DIR).mkdir(parents=True, exist_ok=True)
        run_id = "".join(c if c.isalnum() else "-" for c in run_dir.resolve().name)[:64]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lmforge"),
            dir=str(run_dir / LOGGER_DIR),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=config,
            settings=wandb.Settings(silent=True),
        )
        self.start_step = start_step

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record.get("step", 0))

    def close(self) -> None:
        self.run.finish()


def open_sink(
    kind: str, run_dir: Path, start_step: int, config: dict[str, Any]
) -> MetricSink | None:
    """The sink of train.logger (none: None)."""
    if kind == "tensorboard":
        return TensorBoardSink(run_dir, start_step)
    if kind == "wandb":
        return WandbSink(run_dir, start_step, config)
    return None
