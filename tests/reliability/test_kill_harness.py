"""Crash anywhere: `prepare`, `pretrain` and `finetune classify` killed with SIGKILL at seeded
moments (on a timer and inside file writes), then recovered as a user would. After every kill
the directory is either absent, a run without a checkpoint, or loadable; prepared data is
either absent or complete; and the recovered result is bit-identical to an uninterrupted run.

CI runs a short profile (a few kills per command). LMFORGE_KILLS=long runs 30 per command
(about 20 minutes on 2 cores); LMFORGE_KILLS=N runs N. The long profile's figures are in
docs/reliability.md.
"""

import os
import shutil
from pathlib import Path

import pytest

from .kill_harness import (
    KillPoint,
    check_prepared,
    check_run_dir,
    kill_points,
    run,
    run_and_kill,
    same_weights,
    timed,
    tree_bytes,
)

PROFILE = os.environ.get("LMFORGE_KILLS", "short")
KILLS = {"short": 2, "long": 30}.get(PROFILE) or int(PROFILE)
# each kill costs a killed run and a resumed one: the long profile outlives the suite's timeout
pytestmark = pytest.mark.timeout(300 + 60 * KILLS)

PRETRAIN_SETS = [
    *("--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=32"),
    *("--set", "model.block_size=32", "--set", "train.batch_size=4"),
    *("--set", "train.max_steps=30", "--set", "train.checkpoint_interval=4"),
    *("--set", "train.eval_interval=10", "--set", "train.eval_batches=2"),
    *("--set", "train.warmup_steps=2", "--set", "train.progress=false"),
    *("--set", "train.dtype=float32", "--set", "train.keep_last=2"),
]
CLASSIFY_SETS = [
    *("--set", "train.progress=false", "--set", "train.batch_size=8"),
    *("--set", "finetune.epochs=3", "--set", "train.dtype=float32"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus, its prepared data and an uninterrupted pretrain run, the references."""
    root = tmp_path_factory.mktemp("kills")
    lines = [f"Paragraph {i}: the cat sat on the mat number {i % 7} and slept." for i in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(lines), encoding="utf-8")
    done = run(_prepare_argv(root / "data"), root)
    assert done.returncode == 0, done.stderr
    (root / "reference").mkdir()
    seconds = timed(_pretrain_argv(root, root / "reference" / "run"), root)
    (root / "pretrain_seconds").write_text(str(seconds))
    for split, offset in (("train", 0), ("valid", 1000)):
        rows = ["sentence\tlabel"]
        for i in range(offset, offset + (48 if split == "train" else 16)):
            mood = ("sunny", "warm") if i % 2 == 0 else ("rainy", "cold")
            rows.append(f"day {i} was {mood[0]} and {mood[1]}.\t{i % 2}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _prepare_argv(out: Path) -> list[str]:
    return ["prepare", "--input", "corpus.txt", "--out", str(out), "--vocab-size", "300"]


def _pretrain_argv(root: Path, out: Path) -> list[str]:
    return ["pretrain", "--data", str(root / "data"), "--out", str(out), *PRETRAIN_SETS]


def _classify_argv(root: Path, out: Path) -> list[str]:
    base = root / "reference" / "run"
    files = ["--train", str(root / "train.tsv"), "--valid", str(root / "valid.tsv")]
    return ["finetune", "classify", "--base", str(base), *files, "--out", str(out), *CLASSIFY_SETS]


def _recover_training(fresh: list[str], resume: list[str], out: Path, cwd: Path) -> str:
    """Check the directory a kill left, then recover as a user would: --resume if the run's
    files are there (a run without a checkpoint starts over), else the command again."""
    found = check_run_dir(out)
    argv = fresh if found == "absent" else resume
    if found == "absent" and out.exists():  # a directory without config.json: not lmforge's yet
        argv = [*fresh, "--overwrite"]
    done = run(argv, cwd)
    if done.returncode == 2 and "already reached train.max_steps" in done.stderr:
        return "finished"  # killed after its last checkpoint: nothing left to train
    assert done.returncode == 0, f"{found}: {' '.join(argv)}\n{done.stderr}"
    return found


def _kill_and_recover(
    fresh: list[str], resume: list[str], out: Path, cwd: Path, point: KillPoint, final: Path
) -> str:
    status = run_and_kill(fresh, cwd, point)
    found = _recover_training(fresh, resume, out, cwd)
    assert check_run_dir(out) == "loadable"
    assert same_weights(out / "model.safetensors", final), f"{point.describe()} ({found})"
    return f"{point.describe()}: exit {status}, left {found}"


def test_pretrain_killed_anywhere_resumes_bit_identical(work: Path) -> None:
    longest = float((work / "pretrain_seconds").read_text())
    final = work / "reference" / "run" / "model.safetensors"
    points = kill_points(KILLS, seed=1, longest=longest)
    # right after the run's config.json: it must never exist without the tokenizer beside it
    points[-1] = KillPoint(target="lmforge.rundir.checkpoint.write_text_atomic", nth=1)
    for i, point in enumerate(points):
        out = work / f"pretrain-{i}"
        resume = ["pretrain", "--resume", str(out)]
        print(_kill_and_recover(_pretrain_argv(work, out), resume, out, work, point, final))


def test_classify_killed_anywhere_resumes_bit_identical(work: Path) -> None:
    reference = work / "reference" / "classify"
    seconds = timed(_classify_argv(work, reference), work)
    final = reference / "model.safetensors"
    for i, point in enumerate(kill_points(KILLS, seed=2, longest=seconds)):
        out = work / f"classify-{i}"
        resume = ["finetune", "classify", "--resume", str(out)]
        print(_kill_and_recover(_classify_argv(work, out), resume, out, work, point, final))


def test_prepare_killed_anywhere_is_absent_or_complete_and_reruns_to_the_same_data(
    work: Path,
) -> None:
    reference = tree_bytes(work / "data")
    seconds = timed(_prepare_argv(work / "timed"), work)
    shutil.rmtree(work / "timed")
    points = kill_points(KILLS, seed=3, longest=seconds, max_nth=4)
    points[-1] = KillPoint(target="lmforge.data.shards._append_bytes", nth=1)  # mid-shards
    for i, point in enumerate(points):
        out = work / f"prepared-{i}"
        status = run_and_kill(_prepare_argv(out), work, point)
        found = check_prepared(out)
        done = run(_prepare_argv(out) + (["--overwrite"] if found == "complete" else []), work)
        assert done.returncode == 0, f"{point.describe()} ({found}): {done.stderr}"
        assert tree_bytes(out) == reference, point.describe()
        print(f"{point.describe()}: exit {status}, left {found}")
