"""DDP under torchrun on CPU (gloo): 2 processes with micro batch B follow one process with 2B."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmforge.jobs.prepare import PrepareOptions, prepare

SETS = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.max_steps=6",
    "train.eval_interval=3",
    "train.eval_batches=2",
    "train.checkpoint_interval=3",
    "train.warmup_steps=2",
    "train.progress=false",
    "train.log_interval=1",
    "train.grad_accum=2",
]


def _pretrain(
    data: Path, out: Path, nproc: int, batch: int, strategy: str = "ddp"
) -> subprocess.CompletedProcess:
    sets = [x for s in [*SETS, f"train.batch_size={batch}"] for x in ("--set", s)]
    args = ["pretrain", "--data", str(data), "--out", str(out), *sets]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        command = [*launcher, "-m", "lmforge", *args, "--set", f"dist.strategy={strategy}"]
    else:
        command = [sys.executable, "-m", "lmforge", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _prepared(tmp_path: Path, row: Callable[[int], str]) -> Path:
    """300 short documents row(0) ... row(299), prepared with a 300-token BPE."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(row(i) for i in range(300)), encoding="utf-8")
    data = tmp_path / "data"
    prepare(PrepareOptions(inputs=[str(corpus)], out=data, vocab_size=300))
    return data


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.distributed
@pytest.mark.parametrize(("strategy", "tolerance"), [("ddp", 1e-5), ("fsdp", 1e-4)])
def test_two_processes_follow_one_process_with_the_whole_batch(
    tmp_path: Path, strategy: str, tolerance: float
) -> None:
    data = _prepared(tmp_path, lambda i: f"Line {i}: the cat sat on mat {i % 7} near hat {i % 5}.")
    one = _pretrain(data, tmp_path / "one", nproc=1, batch=8)
    assert one.returncode == 0, one.stderr
    two = _pretrain(data, tmp_path / "two", nproc=2, batch=4, strategy=strategy)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained 6 steps") == 1  # only rank 0 reports
    assert two.stderr.count("step 6: val loss") == 1
    expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(got) == len(expected) == 6
    for a, b in zip(expected, got, strict=True):
        assert abs(a - b) <= tolerance * abs(a)
    w1, w2 = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("one", "two"))
    assert set(w1) == set(w2)
    for name, tensor in w1.items():
        assert float((tensor - w2[name]).abs().max()) <= tolerance, name
    assert not list((tmp_path / "two").glob("**/*.tmp"))
    _resumes_at_world_size_one(tmp_path, expected, w1, tolerance)


def _resumes_at_world_size_one(
    tmp_path: Path, expected: list[float], weights: dict, tolerance: float
) -> None:
    """The 2-process run's step-3 checkpoint continues on 1 process as the 1-process run did:
    the global batch of 2 x 4 rows becomes 1 x 8 and the optimizer state is resharded."""
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    assert (resumed / "checkpoints" / "step_0000003" / "trainer_state" / "optimizer").is_dir()
    command = [sys.executable, "-m", "lmforge", "pretrain", "--resume", str(resumed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train.batch_size 4 -> 8 keeps the global batch of 8" in done.stderr
    got = _losses(resumed)
    assert len(got) == 6
    for a, b in zip(expected[3:], got[3:], strict=True):
        assert abs(a - b) <= tolerance * abs(a)
    final = load_file(str(resumed / "model.safetensors"))
    for name, tensor in weights.items():
        assert float((tensor - final[name]).abs().max()) <= tolerance, name


@pytest.mark.distributed
def test_nproc_starts_the_workers_itself(tmp_path: Path) -> None:
    data = _prepared(tmp_path, lambda i: f"Row {i}: a dog ran {i % 9} laps.")
    sets = [x for s in [*SETS, "train.batch_size=4"] for x in ("--set", s)]
    command = [sys.executable, "-m", "lmforge", "pretrain", "--data", str(data)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "run"), *sets, "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained 6 steps") == 1
    assert "2 processes" in done.stderr
    torchrun = _pretrain(data, tmp_path / "torchrun", nproc=2, batch=4)
    assert torchrun.returncode == 0, torchrun.stderr
    assert _losses(tmp_path / "run") == _losses(tmp_path / "torchrun")


@pytest.mark.distributed
def test_a_failing_rank_takes_the_job_down_with_its_message(tmp_path: Path) -> None:
    data = _prepared(tmp_path, lambda i: f"Row {i}: a hen laid {i % 9} eggs.")
    sets = [x for s in [*SETS, "train.batch_size=4", "dist.strategy=ddp"] for x in ("--set", s)]
    worker = Path(__file__).with_name("failing_worker.py")  # rank 1 raises at step 2
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), *sets]
    start = time.monotonic()
    done = subprocess.run(
        [*launcher, str(worker), *args], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - start < 30
    assert done.returncode != 0
    assert "error: rank 1: shard 3 cannot be read on this node" in done.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no step was completed
