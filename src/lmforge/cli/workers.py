"""`--nproc N`: run a training verb as N DDP worker processes started here by torchrun."""

import argparse
import subprocess
import sys

from lmforge.errors import LMForgeError


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
    done = subprocess.run(worker_command(args.argv, args.nproc), check=False)
    if done.returncode:
        raise LMForgeError(f"a worker process failed (exit {done.returncode}); see above")
    return True
