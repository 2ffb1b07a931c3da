"""Who may write a run directory, and how a run starts and stops: the writer lock (taken by
rank 0), restarting a run stopped before its first checkpoint, and SIGTERM / Ctrl-C, which stop
training at the next step boundary with a checkpoint (every rank after the same step)."""

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmforge.errors import CheckpointError, LMForgeError
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import check_output_dir
from lmforge.rundir.lock import run_lock
from lmforge.train.distributed import launched_rank

log = logging.getLogger(__name__)


WEIGHT_FILES = (layout.MODEL_FILE, layout.ADAPTER_FILE, layout.QUANTIZED_WEIGHTS)


def never_checkpointed(run_dir: Path) -> bool:
    """A training run stopped before its first checkpoint: its config.json (written when
    training starts) but no checkpoint and no weights (an imported or merged run has those)."""
    return (
        (run_dir / layout.CONFIG_FILE).is_file()
        and not ckpt.list_checkpoints(run_dir)
        and not any((run_dir / name).is_file() for name in WEIGHT_FILES)
    )


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint --resume continues from; None for a run stopped before its first
    checkpoint, which then starts over from step 0 with its saved config (a notice says so)."""
    if not (run_dir / layout.CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {layout.CONFIG_FILE})")
    checkpoints = ckpt.list_checkpoints(run_dir)
    if checkpoints:
        return checkpoints[-1]
    if not never_checkpointed(run_dir):
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from")
    log.warning(
        "notice: %s stopped before its first checkpoint; starting it over from step 0 with its "
        "saved config",
        run_dir,
    )
    return None


def check_new_run_dir(out: Path, overwrite: bool) -> None:
    """check_output_dir, and the way on for a run stopped before its first checkpoint."""
    if not overwrite and out.is_dir() and never_checkpointed(out):
        raise LMForgeError(
            f"{out} holds a run stopped before its first checkpoint; restart it from its saved "
            f"config with --resume {out}, or pass --overwrite to replace it"
        )
    check_output_dir(out, overwrite)


def main_rank_lock(run_dir: Path, command: str) -> contextlib.AbstractContextManager[Any]:
    """run_dir's writer lock (rundir/lock.py), taken by rank 0 only: under torchrun the other
    ranks neither take it nor wait for it."""
    if launched_rank() != 0:
        return contextlib.nullcontext()
    return run_lock(run_dir, command)


REPEAT_GRACE_S = 2.0  # the same signal again this soon: a launcher's copy (torchrun forwards)


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) while training: the first only records itself, and the
    trainer stops at the next step boundary with a checkpoint. The same signal again after
    REPEAT_GRACE_S (Ctrl-C pressed twice) goes to the handler that was there before: abort at
    once, without the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce  # rank 0 says what happens; the other ranks keep quiet
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        """The handlers for the block, the previous ones restored after it (none outside the main
        thread, where Python cannot install them)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
            # restart interrupted system calls: gloo's socket reads do not retry on EINTR, and a
            # rank interrupted inside a collective would leave the others waiting forever
            signal.siginterrupt(sig, False)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if self.announce:  # os.write: safe inside a signal handler
                name = signal.Signals(signum).name
                again = "Ctrl-C" if signum == signal.SIGINT else name
                os.write(
                    2,
                    f"{name} received: stopping after this step with a checkpoint ({again} "
                    "again aborts at once, without one)\n".encode(),
                )
            return
        if now - self._first_at < REPEAT_GRACE_S:
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        os.kill(os.getpid(), signum)

    def agreed(self) -> bool:
        """Whether to stop now; under torchrun the largest signal number of all ranks (an
        all-reduce MAX at every step boundary), so every rank stops after the same step."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.signum is not None
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        # decide on the reduced flag alone: a signal that lands during or just after the
        # all-reduce (its handler runs when the call returns) is this rank's news only, and
        # stopping on it here would leave the other ranks waiting in the next step's collectives
        agreed = int(flag.item())
        if agreed and self.signum is None:
            self.signum = agreed  # another rank's signal
        return agreed != 0
