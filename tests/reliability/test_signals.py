"""SIGTERM and Ctrl-C while training: a checkpoint at the next step boundary, exit 143 / 130
with a resume hint, and --resume ends with the weights of an uninterrupted run; under torchrun
every rank stops after the same step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli.main import main

from .conftest import TINY_SETS, prepare_toy_corpus

SETS = [
    *TINY_SETS,
    *("--set", "train.max_steps=30", "--set", "train.eval_interval=15"),
    *("--set", "train.checkpoint_interval=0", "--set", "train.log_interval=1"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    prepare_toy_corpus(root)
    return root / "data"


def _logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines()[:-1]]
    return max(steps, default=0)


def _start_and_signal(
    argv: list[str], run: Path, log: Path, sig: int, target: str = "launcher"
) -> subprocess.Popen:
    """Start `lmforge ARGV`, wait until it logged step 3, send sig to it (or, target="worker",
    to its second torchrun worker); the process, for its exit status."""
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "lmforge", *argv], stderr=stderr)
    deadline = time.monotonic() + 240
    while _logged_step(run) < 3:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    pid = _workers(process.pid)[-1] if target == "worker" else process.pid
    os.kill(pid, sig)
    process.wait(timeout=240)
    return process


def _workers(launcher: int) -> list[int]:
    """The torchrun workers under a `--nproc` launcher (Linux /proc: children of children)."""

    def children(pid: int) -> list[int]:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in path.read_text().split()] if path.is_file() else []

    return sorted(w for torchrun in children(launcher) for w in children(torchrun))


def _checkpointed_step(run: Path, err: str, name: str) -> int:
    line = next(line for line in err.splitlines() if line.startswith("interrupted by"))
    step = int(line.split(f"interrupted by {name} at step ")[1].split(":")[0])
    assert 3 <= step < 30, line
    assert f"continue with: lmforge pretrain --resume {run}" in line
    assert (run / "checkpoints" / f"step_{step:07d}").is_dir()
    assert json.loads((run / "trainer_state" / "state.json").read_text())["step"] == step
    return step


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, log = tmp_path / "run", tmp_path / "run.log"
    argv = ["pretrain", "--data", str(data), "--out", str(run), *SETS]
    process = _start_and_signal(argv, run, log, signal.SIGTERM)
    err = log.read_text()
    assert process.returncode == 143, err
    assert "Traceback" not in err
    _checkpointed_step(run, err, "SIGTERM")
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "whole"), *SETS]) == 0
    resumed, whole = (load_file(str(d / "model.safetensors")) for d in (run, tmp_path / "whole"))
    assert resumed.keys() == whole.keys()
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name


def test_ctrl_c_checkpoints_and_exits_130(data: Path, tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "run.log"
    argv = ["pretrain", "--data", str(data), "--out", str(run), *SETS]
    process = _start_and_signal(argv, run, log, signal.SIGINT)
    err = log.read_text()
    assert process.returncode == 130, err
    assert "KeyboardInterrupt" not in err
    _checkpointed_step(run, err, "SIGINT")


@pytest.mark.distributed
@pytest.mark.parametrize("target", ["launcher", "worker"])
def test_under_torchrun_every_rank_stops_after_the_same_step(
    data: Path, tmp_path: Path, target: str
) -> None:
    """SIGTERM to the --nproc launcher reaches every worker through torchrun; SIGTERM to one
    worker reaches the other through the all-reduced stop flag. Either way the checkpoint's
    collectives (a barrier, the sharded optimizer state) complete: both ranks stopped there."""
    run, log = tmp_path / "run", tmp_path / "run.log"
    argv = ["pretrain", "--data", str(data), "--out", str(run), *SETS, "--nproc", "2"]
    process = _start_and_signal(argv, run, log, signal.SIGTERM, target)
    err = log.read_text()
    assert err.count("interrupted by SIGTERM") == 1, err  # rank 0 alone reports
    step = _checkpointed_step(run, err, "SIGTERM")
    shards = run / "checkpoints" / f"step_{step:07d}" / "trainer_state" / "optimizer"
    assert len(list(shards.glob("shard-*"))) == 2, err  # both ranks wrote their shard
    # the launcher forwarded the signal: it exits as interrupted; a worker's own signal
    # reaches the launcher as a failed worker
    assert process.returncode == (143 if target == "launcher" else 2), err
