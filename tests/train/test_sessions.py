"""Every training verb goes through the one session (jobs/session.py), so each one checkpoints,
resumes exactly and runs as several DDP processes:

- killed after a checkpoint (its newer checkpoints removed, as a kill leaves them) and resumed,
  a run ends bit-identical to the uninterrupted one: the same losses step by step, the same
  weights;
- `--nproc 2` (torchrun, gloo) with micro batch B follows one process with batch 2B.

Kinds: finetune classify, multitask, lm, sft; compress distill; the recovery steps of prune.
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.config import load_config
from lmforge.jobs import compress, finetune, finetune_start
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain
from lmforge.rundir import layout

BASE_SETS = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=8",
    "train.max_steps=4",
    "train.eval_interval=4",
    "train.eval_batches=2",
    "train.checkpoint_interval=4",
    "train.warmup_steps=1",
    "train.progress=false",
]
# fine-tunes of the base: short, logged every step, checkpointed every 4 steps
LM_SETS = [
    "train.max_steps=8",
    "train.eval_interval=4",
    "train.checkpoint_interval=4",
    "train.eval_batches=2",
    "train.warmup_steps=2",
    "train.log_interval=1",
    "train.progress=false",
    "train.batch_size=4",
]
CLASSIFY_SETS = ["train.log_interval=1", "train.progress=false", "train.batch_size=8"]
WORDS = {"pos": ["good", "great", "fine", "lovely"], "neg": ["bad", "awful", "poor", "sad"]}


def _table(path: Path, rows: int, offset: int, kinds: tuple[str, str]) -> Path:
    """A TSV of `sentence<TAB>label` rows whose label shows in the words."""
    lines = ["sentence\tlabel"]
    for i in range(offset, offset + rows):
        label = kinds[i % 2]
        word = WORDS["pos" if i % 2 == 0 else "neg"][i % 4]
        lines.append(f"the film number {i} was {word} and {word}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pretrained GPT base, its data, and the inputs of every fine-tune."""
    root = tmp_path_factory.mktemp("sessions")
    corpus = root / "corpus.txt"
    docs = [f"Line {i}: the cat sat on mat {i % 7} and the film was {i % 5}." for i in range(300)]
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    data = root / "data"
    prepare(PrepareOptions(inputs=[str(corpus)], out=data, vocab_size=300))
    base = root / "base"
    pretrain(load_config(None, [*BASE_SETS, f"data.dir={data}"]), base)
    files = {
        "root": root,
        "data": data,
        "base": base,
        "train": _table(root / "train.tsv", 64, 0, ("pos", "neg")),
        "valid": _table(root / "valid.tsv", 16, 100, ("pos", "neg")),
    }
    for name in ("mood", "tone"):
        task = root / f"{name}.yaml"
        train = _table(root / f"{name}_train.tsv", 48, 0 if name == "mood" else 7, ("a", "b"))
        valid = _table(root / f"{name}_valid.tsv", 16, 200, ("a", "b"))
        task.write_text(f"train_file: {train.name}\nvalid_file: {valid.name}\n", encoding="utf-8")
        files[name] = task
    for split, n in (("sft_train", 48), ("sft_valid", 8)):
        rows = [{"prompt": f"Say hi to {100 + i}:", "completion": " hi there."} for i in range(n)]
        (root / f"{split}.jsonl").write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
        files[split] = root / f"{split}.jsonl"
    student = root / "student.yaml"
    student.write_text(
        "model: {n_layer: 1, n_head: 2, n_embd: 16, block_size: 32}\n"
        "train: {max_steps: 8, eval_interval: 4, checkpoint_interval: 4, eval_batches: 2, "
        "batch_size: 4, warmup_steps: 2, log_interval: 1, progress: false}\n",
        encoding="utf-8",
    )
    files["student"] = student
    return files


# ---------------------------------------------------------------- one run of each kind


def _classify(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    flags = {"train_file": str(w["train"]), "valid_file": str(w["valid"])}
    cfg = finetune.resolve("classify", w["base"], None, [*CLASSIFY_SETS, *sets], flags)
    return finetune.finetune_classify(cfg, out)


def _multitask(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    sets = [*CLASSIFY_SETS, "finetune.epochs=2", *sets]
    cfg = finetune.resolve("multitask", w["base"], None, sets, {})
    return finetune.finetune_multitask(cfg, {"mood": w["mood"], "tone": w["tone"]}, out)


def _lm(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    cfg = finetune.resolve("lm", w["base"], None, [*LM_SETS, f"data.dir={w['data']}", *sets], {})
    return finetune.finetune_lm(cfg, out)


def _sft(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    flags = {"train_file": str(w["sft_train"]), "valid_file": str(w["sft_valid"]), "pack": False}
    cfg = finetune.resolve("sft", w["base"], None, [*LM_SETS, *sets], flags)
    return finetune.finetune_sft(cfg, out)


def _distill(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    return compress.distill_run(w["base"], w["student"], w["data"], out, sets)


def _prune(w: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Any]:
    return compress.prune_run(w["base"], out, 0.5, None, 8, w["data"], 1e-3)


KINDS: dict[str, Callable[[dict[str, Path], Path, list[str]], dict[str, Any]]] = {
    "classify": _classify,
    "multitask": _multitask,
    "lm": _lm,
    "sft": _sft,
    "distill": _distill,
    "prune": _prune,
}


def _resume(kind: str, run: Path) -> dict[str, Any]:
    if kind == "distill":
        return compress.resume_distill(run, [])
    if kind == "prune":
        return compress.resume_prune(run)
    return finetune.resume_finetune(run, [], kind)


def _losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / layout.METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _evals(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / layout.METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def _weights(run: Path) -> dict[str, Any]:
    """Every weights file of a run (top level, best/, the newest checkpoint), by name."""
    newest = sorted((run / layout.CHECKPOINTS_DIR).glob("step_*"))[-1]
    files = [*run.glob("*.safetensors"), *newest.glob("*.safetensors")]
    files += list((run / layout.BEST_DIR).glob("*.safetensors"))
    return {p.relative_to(run).as_posix(): load_file(str(p)) for p in files}


# ---------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_after_a_checkpoint_and_resumed_ends_bit_identical(
    world: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    whole = tmp_path / "whole"
    KINDS[kind](world, whole, [])
    checkpoints = sorted((whole / layout.CHECKPOINTS_DIR).glob("step_*"))
    assert len(checkpoints) >= 2, checkpoints  # it wrote checkpoints while it ran
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / layout.CHECKPOINTS_DIR / checkpoints[-1].name)  # the kill came first
    resumed_at = int(checkpoints[-2].name.removeprefix("step_"))
    summary = _resume(kind, killed)
    assert summary["steps"] == int(checkpoints[-1].name.removeprefix("step_"))
    assert _losses(killed) == _losses(whole)
    assert [s for s, _ in _losses(killed)] == list(range(1, summary["steps"] + 1))
    assert _evals(killed) == _evals(whole)
    assert resumed_at < summary["steps"]
    expected, got = _weights(whole), _weights(killed)
    assert set(got) == set(expected)
    for name, tensors in expected.items():
        assert set(got[name]) == set(tensors), name
        for key, tensor in tensors.items():
            assert got[name][key].equal(tensor), f"{name}: {key}"


def test_resume_refuses_a_run_that_is_not_a_fine_tune(world: dict[str, Path]) -> None:
    with pytest.raises(Exception, match="not a fine-tuned run"):
        finetune.resume_finetune(world["base"], [])


# ---------------------------------------------------------------- two processes


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=300
    )


def _command(kind: str, w: dict[str, Path], out: Path, batch: int) -> list[str]:
    """The CLI line of each kind, dropout off everywhere, with micro batch `batch`."""
    sets = ["model.dropout=0"]
    if kind in ("classify", "multitask"):
        sets += [*CLASSIFY_SETS, "finetune.dropout=0", f"train.batch_size={batch}"]
        if kind == "multitask":
            sets += ["finetune.epochs=1"]
            tasks = ["--task", f"mood={w['mood']}", "--task", f"tone={w['tone']}"]
        else:
            sets += ["finetune.epochs=1"]
            tasks = ["--train", str(w["train"]), "--valid", str(w["valid"])]
        args = ["finetune", kind, "--base", str(w["base"]), "--out", str(out), *tasks]
    elif kind in ("lm", "sft"):
        sets += [*LM_SETS, f"train.batch_size={batch}"]
        if kind == "lm":
            inputs = ["--data", str(w["data"])]
        else:
            inputs = ["--train", str(w["sft_train"]), "--valid", str(w["sft_valid"]), "--no-pack"]
        args = ["finetune", kind, "--base", str(w["base"]), "--out", str(out), *inputs]
    elif kind == "distill":
        sets = [f"train.batch_size={batch}"]
        args = ["compress", "distill", "--teacher", str(w["base"]), "--student-config"]
        args += [str(w["student"]), "--data", str(w["data"]), "--out", str(out)]
    else:
        sets = [f"train.batch_size={batch}"]
        args = ["compress", "prune", str(w["base"]), "--sparsity", "0.5", "--out", str(out)]
        args += ["--finetune-steps", "8", "--data", str(w["data"]), "--lr", "1e-3"]
    return [*args, *(x for s in sets for x in ("--set", s))]


@pytest.mark.distributed
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_processes_follow_one_process_with_the_whole_batch(
    world: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    assert main(_command(kind, world, tmp_path / "one", 8)) == 0  # in-process: no start-up
    two = _cli(*_command(kind, world, tmp_path / "two", 4), "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert "2 processes" in two.stderr
    assert two.stdout.count(f"-> {tmp_path / 'two'}") == 1, two.stdout  # rank 0 reports
    expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert len(got) >= 4
    for (_, a), (_, b) in zip(expected, got, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(w1) == set(w2)
    for name, tensors in w1.items():
        for key, tensor in tensors.items():
            assert float((tensor - w2[name][key]).abs().max()) <= 1e-4, f"{name}: {key}"


def test_the_cli_resumes_each_verb_from_the_run_alone(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--resume RUN` needs none of the flags that start a run, refuses them, and names the
    verb that made the run when another one is used."""
    run = tmp_path / "sst"
    _classify(world, run, [])
    shutil.rmtree(sorted((run / layout.CHECKPOINTS_DIR).glob("step_*"))[-1])
    capsys.readouterr()
    assert main(["finetune", "classify", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"-> {run}" in out
    assert "best epoch" in out
    errors = {
        ("finetune", "classify"): "finetune classify needs --base",
        ("finetune", "classify", "--resume", str(run), "--train", "x.tsv"): "drop --train",
        ("finetune", "lm", "--resume", str(run)): "resume it with that verb",
        ("finetune", "sft", "--resume", str(world["base"])): "not a fine-tuned run",
        ("compress", "distill", "--out", str(tmp_path / "d")): "needs --teacher",
        ("compress", "prune", "--resume", str(run)): "unreadable",
    }
    for args, needle in errors.items():  # in-process: the CLI's own error path, no start-up
        code = main(list(args))
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert needle in err, (args, err)
        assert "Traceback" not in err


def test_a_classifier_keeps_its_best_evaluation_not_its_last(tmp_path: Path) -> None:
    """The run's model.safetensors becomes best/'s weights (and best's eval record is the one
    reported); when no evaluation beat step 0, the newest weights stay, with a warning."""
    from safetensors.torch import save_file
    from torch import tensor

    run = tmp_path / "run"
    (run / layout.BEST_DIR).mkdir(parents=True)
    save_file({"w": tensor([1.0])}, str(run / layout.BEST_DIR / layout.MODEL_FILE))
    save_file({"w": tensor([2.0])}, str(run / layout.MODEL_FILE))
    summary = {
        "best_step": 4,
        "best_metric": "val_accuracy",
        "best_metrics": {"step": 4, "val_accuracy": 0.9},
        "last_metrics": {"step": 8, "val_accuracy": 0.7},
    }
    never_improved = {**summary, "best_step": 0}
    assert finetune_start.keep_best_weights(run, never_improved)["step"] == 8
    assert load_file(str(run / layout.MODEL_FILE))["w"].item() == 2.0
    assert finetune_start.keep_best_weights(run, summary)["val_accuracy"] == 0.9
    assert load_file(str(run / layout.MODEL_FILE))["w"].item() == 1.0
    assert load_file(str(run / layout.BEST_DIR / layout.MODEL_FILE))["w"].item() == 1.0
