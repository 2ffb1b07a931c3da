"""One writer per run directory: a second writer fails at once naming the holder's pid, even
with --overwrite, and the holder's run is untouched; a lock left by a dead process is taken
over; under torchrun only rank 0 locks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.cli.main import main
from lmforge.errors import RunInUse
from lmforge.jobs.run_control import main_rank_lock
from lmforge.rundir.lock import lock_path, run_lock

from .conftest import TINY_SETS, prepare_toy_corpus

SETS = TINY_SETS


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus, its prepared data and a 10-step base run (to fine-tune)."""
    root = tmp_path_factory.mktemp("locks")
    prepare_toy_corpus(root)
    argv = ["pretrain", "--data", str(root / "data"), "--out", str(root / "base"), *SETS]
    assert main([*argv, "--set", "train.max_steps=10", "--set", "train.eval_interval=10"]) == 0
    return root


def _wait_for_lock(path: Path, process: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first job ended before the test could start"
        if path.is_file() and path.read_text().strip():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_a_second_pretrain_overwrite_fails_at_once_and_the_first_finishes(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    run = work / "busy"
    steps = ["--set", "train.max_steps=60", "--set", "train.eval_interval=60"]
    argv = ["pretrain", "--data", str(work / "data"), "--out", str(run), *SETS, *steps]
    log = (work / "busy.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "lmforge", *argv], stderr=log)
    holder = _wait_for_lock(lock_path(run), first)
    assert holder["pid"] == first.pid
    assert holder["command"] == "lmforge pretrain"
    started = time.monotonic()
    code = main([*argv, "--overwrite", "--set", "train.max_steps=5"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - started < 5  # at once: no data read, no model built
    assert f"in use by pid {first.pid}" in err
    assert first.poll() is None, "the first job died"
    assert first.wait(timeout=300) == 0, (work / "busy.log").read_text()
    assert (run / "checkpoints" / "step_0000060").is_dir()  # its run is whole
    assert json.loads((run / "trainer_state" / "state.json").read_text())["step"] == 60
    assert not lock_path(run).exists()  # released with the job


def test_prepare_into_a_locked_directory_fails_and_leaves_it(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    out = work / "prepared"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["prepare", "--input", str(work / "corpus.txt"), "--out", str(out), "--overwrite"]
    with run_lock(out, "test holder"):
        code = main([*argv, "--vocab-size", "300", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"in use by pid {os.getpid()} (test holder)" in err
    assert (out / "mine.txt").read_text() == "keep"
    assert main([*argv, "--vocab-size", "300", "--workers", "1"]) == 0  # free again: it works
    assert not (out / "mine.txt").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_finetune_into_a_locked_directory_fails(
    work: Path, capsys: pytest.CaptureFixture, resume: bool
) -> None:
    out = work / f"ft_{resume}"
    if resume:
        argv = ["finetune", "lm", "--resume", str(out)]
        out.mkdir()
    else:
        argv = ["finetune", "lm", "--base", str(work / "base"), "--data", str(work / "data")]
        argv += ["--out", str(out), "--overwrite", "--set", "train.progress=false"]
    with run_lock(out, "test holder"):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"in use by pid {os.getpid()}" in err


def test_a_stale_lock_is_taken_over_with_a_notice(
    work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    out = work / "stale"
    record = {"pid": pid, "host": "h", "command": "lmforge prepare"}
    lock_path(out).write_text(json.dumps(record))
    argv = ["prepare", "--input", str(work / "corpus.txt"), "--out", str(out)]
    assert main([*argv, "--vocab-size", "300", "--workers", "1"]) == 0
    assert f"locked by pid {pid}" in caplog.text
    assert "no longer running" in caplog.text
    assert (out / "tokenizer.json").is_file()
    assert not lock_path(out).exists()


def test_the_lock_is_released_when_the_block_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="boom"), run_lock(out, "a"):
        raise ValueError("boom")
    with run_lock(out, "b") as path:  # free again
        assert json.loads(path.read_text())["command"] == "b"
        with pytest.raises(RunInUse, match="in use by pid"), run_lock(out, "c"):
            pass


def test_only_rank_zero_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    with run_lock(out, "rank 0"):
        monkeypatch.setenv("RANK", "1")
        with main_rank_lock(out, "rank 1"):  # neither blocks nor fails
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunInUse), main_rank_lock(out, "another rank 0"):
            pass
