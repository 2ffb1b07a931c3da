"""`--nproc N`: run a training verb as N DDP worker processes started here by torchrun."""

import argparse
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator

from lmforge.errors import Interrupted, LMForgeError


def add_nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="start this many DDP worker processes here (torchrun; gloo on CPU) instead of one",
    )


def worker_command(argv: list[str], nproc: int) -> list[str]:
    """The torchrun command running the same lmforge command line as nproc DDP workers: argv
    without --nproc, plus `--set dist.strategy=ddp` unless a strategy is set."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    if not any(arg.strip().startswith("dist.strategy=") for arg in rest):
        rest += ["--set", "dist.strategy=ddp"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(nproc), "-m", "lmforge", *rest]


def started_workers(args: argparse.Namespace) -> bool:
    """With --nproc N > 1, run the command as N workers and wait for them (True); else False."""
    if args.nproc < 1:
        raise LMForgeError("--nproc must be >= 1")
    if args.nproc == 1:
        return False
    # a session of its own: a terminal's Ctrl-C reaches this launcher alone, which passes it on
    # once (torchrun passes it to every worker); a worker that got it twice would abort unsaved
    workers = subprocess.Popen(worker_command(args.argv, args.nproc), start_new_session=True)
    with forwarded_signals(workers) as received:
        code = workers.wait()
    if received:  # the workers stopped with a checkpoint; rank 0 said how to continue
        raise Interrupted(received[0], step=-1)
    if code:
        raise LMForgeError(f"a worker process failed (exit {code}); see above")
    return True


@contextlib.contextmanager
def forwarded_signals(process: subprocess.Popen) -> Iterator[list[int]]:
    """SIGTERM and SIGINT sent to this process go to `process` instead, for the block; yields
    the list of the signals received."""
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
