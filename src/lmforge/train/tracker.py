"""Metrics bookkeeping: metrics.jsonl, the progress bar, the loss plot, and train.logger's
sink (TensorBoard, wandb) when there is one."""

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.plots import plot_loss_curves
from lmforge.rundir.files import append_text, write_text_atomic
from lmforge.rundir.layout import LOSS_PLOT, METRICS_FILE
from lmforge.train.loggers import MetricSink


class Tracker:
    """Appends records to run_dir/metrics.jsonl, drives a tqdm bar and redraws loss.png on eval."""

    def __init__(
        self,
        run_dir: Path | None,
        total_steps: int,
        start_step: int,
        progress: bool,
        verbose: bool = True,
        sink: MetricSink | None = None,
    ):
        self.run_dir, self.verbose = run_dir, verbose  # verbose False: a silent worker rank
        self.sink = sink  # every logged record goes there too
        self.train_points: list[tuple[int, float]] = []
        self.val_points: list[tuple[int, float]] = []
        self.last_eval: dict[str, Any] = {}  # the newest evaluation record
        self.evals: dict[int, dict[str, Any]] = {}  # every evaluation record, by step
        if run_dir is not None:
            self._reload(run_dir / METRICS_FILE, start_step)
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            unit="step",
        )

    def _reload(self, path: Path, start_step: int) -> None:
        """On resume keep the history up to the checkpoint's step and drop what came after."""
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= start_step:
                kept.append(line)
                self._remember(record)
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))

    def _remember(self, record: dict[str, Any]) -> None:
        if "loss" in record and math.isfinite(record["loss"]):
            self.train_points.append((record["step"], record["loss"]))
        if "val_loss" in record:
            self.val_points.append((record["step"], record["val_loss"]))
            self.last_eval = record
            self.evals[record["step"]] = record

    def log(self, record: dict[str, Any]) -> None:
        """Record one metrics line (and plot when it carries a validation loss)."""
        self._remember(record)
        if self.run_dir is None:
            return
        append_text(self.run_dir / METRICS_FILE, json.dumps(record) + "\n")
        if self.sink is not None:
            self.sink.log(record)
        if "val_loss" in record:
            plot_loss_curves(self.train_points, self.val_points, self.run_dir / LOSS_PLOT)

    def advance(self, steps: int, **postfix: str) -> None:
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(steps)

    def write(self, message: str, level: int = logging.INFO) -> None:
        """Print a line to stderr without breaking the progress bar; `lmforge -q` (log level
        WARNING) keeps the info lines (evaluations) and still shows warnings."""
        if self.verbose and logging.getLogger("lmforge").isEnabledFor(level):
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.sink is not None:
            self.sink.close()
            self.sink = None
