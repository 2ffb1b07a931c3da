"""A harness that kills lmforge commands with SIGKILL at chosen moments and checks what is left.

A command runs as a subprocess through a small wrapper that can also kill it from the inside,
at the n-th call of a chosen function (a file write, a rename, a directory removal), before or
after the call: that is how kills land inside checkpoint writes and shard writes, which a timer
would rarely hit. Nothing in lmforge's code knows about the harness.

Every kill is followed by the checks a user relies on (`check_run_dir`, `check_prepared`) and by
the recovery a user would do: `--resume` for training runs, the same command again for prepare.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

# Runs the CLI; with KILL_TARGET=module.attr, KILL_NTH=n and KILL_WHEN=before|after it first
# wraps that function so that its n-th call kills the process (SIGKILL, no cleanup).
WRAPPER = r"""
import importlib, os, signal, sys
target = os.environ.get("KILL_TARGET")
if target:
    nth, when = int(os.environ["KILL_NTH"]), os.environ.get("KILL_WHEN", "after")
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # "pathlib.Path.open": module pathlib, class Path
        try:
            module = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    for name in parts[cut:-1]:
        module = getattr(module, name)
    attr = parts[-1]
    original, calls = getattr(module, attr), [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(module, attr, wrapped)
from lmforge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

# Functions whose n-th call is a forced kill point: where files are written and renamed.
FORCED_TARGETS = (
    "safetensors.torch.save_file",  # weights (and state) into the staging directory
    "os.replace",  # a temporary file renamed into place
    "os.rename",  # a staged directory renamed into place
    "shutil.rmtree",  # old checkpoints pruned, staging removed
    "os.link",  # the top-level mirror of the newest checkpoint
)


@dataclass(frozen=True)
class KillPoint:
    """Kill after `delay` seconds, or (target set) at the nth call of target."""

    delay: float = 0.0
    target: str | None = None
    nth: int = 1
    when: str = "after"

    def describe(self) -> str:
        if self.target is None:
            return f"SIGKILL after {self.delay:.2f} s"
        return f"SIGKILL {self.when} call {self.nth} of {self.target}"


def kill_points(n: int, seed: int, longest: float, max_nth: int = 12) -> list[KillPoint]:
    """n kill points, seeded: about half on a timer within the uninterrupted run's duration,
    half forced inside file operations."""
    rng = random.Random(seed)
    points = []
    for i in range(n):
        if i % 2 == 0:
            points.append(KillPoint(delay=rng.uniform(0.2, longest)))
        else:
            target = FORCED_TARGETS[(i // 2) % len(FORCED_TARGETS)]
            when = rng.choice(("before", "after"))
            points.append(KillPoint(target=target, nth=rng.randint(1, max_nth), when=when))
    return points


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (no kill)."""
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(None),
    )


def run_and_kill(argv: list[str], cwd: Path, point: KillPoint, timeout: float = 300) -> int:
    """Run the CLI and kill it at `point`; the exit status (−9 when the kill landed, else the
    command's own status: it may finish before the timer or the n-th call never comes)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(point),
    )
    if point.target is None:
        try:
            return process.wait(timeout=point.delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    return process.wait(timeout=timeout)


def _env(point: KillPoint | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if point is not None and point.target is not None:
        env.update(KILL_TARGET=point.target, KILL_NTH=str(point.nth), KILL_WHEN=point.when)
    return env


def timed(argv: list[str], cwd: Path) -> float:
    """Seconds an uninterrupted run takes (it must succeed)."""
    start = time.perf_counter()
    done = run(argv, cwd)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same_weights(a: Path, b: Path) -> bool:
    """Bit-identical tensors, name by name."""
    left, right = weights(a), weights(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def check_run_dir(run_dir: Path) -> str:
    """What a user finds after a kill: 'absent' (nothing yet), 'no checkpoint' (the run's files
    but no complete checkpoint) or 'loadable'. Raises AssertionError when a complete-looking
    file is unreadable or a checkpoint listed as complete does not load."""
    from lmforge.rundir.checkpoint import list_checkpoints, load_trainer_state
    from lmforge.rundir.load import load_classifier, load_run

    if not (run_dir / "config.json").is_file():
        return "absent"
    json.loads((run_dir / "config.json").read_text(encoding="utf-8"))  # never half-written
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return "no checkpoint"
    for checkpoint in checkpoints:  # every checkpoint listed as complete reads back
        load_trainer_state(checkpoint)
        for file in checkpoint.glob("*.safetensors"):
            weights(file)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    if config["train"]["objective"] == "classify":  # what predict and evaluate --classify load
        _, model, tokenizer, _ = load_classifier(run_dir)
    else:
        _, model, tokenizer = load_run(run_dir)  # what generate and evaluate load
    ids = torch.tensor([tokenizer.encode("the cat")[:4] or [0]])
    with torch.no_grad():
        logits = model(ids)
    assert bool(torch.isfinite(logits).all())
    return "loadable"


def check_prepared(data_dir: Path) -> str:
    """'absent' or 'complete': a prepared directory either does not exist or reads whole, every
    shard holding exactly the tokens meta.json counts."""
    from lmforge.data.shards import TokenShards

    if not data_dir.exists():
        return "absent"
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    shards = TokenShards(data_dir)
    for split in ("train", "val"):
        assert shards.num_tokens(split) == sum(f["tokens"] for f in meta["splits"][split]["files"])
    return "complete"


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every regular file under directory (hidden ones too), by relative path."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
