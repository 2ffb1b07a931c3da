"""finetune classify --from-scratch CONFIG: a tokenizer and a new base trained on the training
texts only (never the validation texts or labels), CONFIG's settings reaching each stage, the
CLI's flag checks, and a run killed while its base pretrains resuming to the same weights."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.data.shards import TokenShards
from lmforge.jobs import finetune
from lmforge.jobs.from_scratch import DONE_FILE, SCRATCH_DIR
from lmforge.model.layers import CountedNgramEmbedding
from lmforge.rundir import layout
from lmforge.rundir.load import read_run_config
from lmforge.tokenizer import Tokenizer

from .test_domain_adapt import _table

RECIPE = """\
model:
  arch: bert
  n_layer: 1
  n_head: 2
  n_embd: 32
  block_size: 48
  vocab_size: 150
  ngram_buckets: 64
  ngram_min_count: 2
train:
  max_steps: 6
  batch_size: 8
  lr: 2.0e-3
  eval_batches: 2
  progress: false
finetune:
  epochs: 2
  pooling: mean
"""


@pytest.fixture
def task(tmp_path: Path) -> dict[str, Path]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    return {
        "recipe": recipe,
        "train": _table(tmp_path / "train.tsv", 48, 0, "trainmark"),
        "valid": _table(tmp_path / "valid.tsv", 16, 100, "validmark"),
    }


def _flags(task: dict[str, Path], **more: object) -> dict[str, object]:
    return {"train_file": str(task["train"]), "valid_file": str(task["valid"]), **more}


def test_base_and_tokenizer_come_from_the_training_texts_only(task, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = finetune.finetune_classify_from_scratch(task["recipe"], _flags(task), [], out)
    root = out / SCRATCH_DIR
    data = root / "data"
    tokenizer = Tokenizer.load(data / layout.TOKENIZER_FILE)
    shards = TokenShards(data)
    text = "".join(
        tokenizer.decode(np.concatenate(shards.arrays[s]).tolist()) for s in ("train", "val")
    )
    assert sorted(int(day) for day in re.findall(r"(\d+) was", text)) == list(range(48))
    assert "validmark" not in (root / "train_text.txt").read_text(encoding="utf-8")
    assert "\t" not in text  # no label column
    assert Tokenizer.load(out / layout.TOKENIZER_FILE).sha256() == tokenizer.sha256()
    base = read_run_config(root / "base")
    assert base.train.objective == "mlm"
    assert base.train.max_steps == 6  # CONFIG's train.max_steps: no --pretrain-steps given
    assert base.model.vocab_size == tokenizer.vocab_size
    assert (root / "base" / DONE_FILE).is_file()
    codes = load_file(str(root / "base" / layout.MODEL_FILE))["ngram_emb.codes"]
    assert (codes != CountedNgramEmbedding.ABSENT).sum() > 0  # counted from the task text
    cfg = read_run_config(out)
    assert cfg.finetune.base == str(root / "base")
    assert cfg.finetune.from_scratch == str(task["recipe"])
    assert cfg.finetune.pooling == "mean"  # CONFIG's finetune.* reaches the classifier
    assert cfg.train.lr == 2e-3  # and its train.*, less the keys the classifier sets itself
    assert cfg.train.objective == "classify"
    assert cfg.train.max_steps == 2 * (48 // 8)  # from finetune.epochs, not train.max_steps
    assert summary["epochs"] == 2
    tuned = load_file(str(out / layout.MODEL_FILE))
    assert tuned["body.ngram_emb.codes"].equal(codes)


def test_pretrain_steps_and_sets_override_the_recipe(task, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = ["train.lr=5e-4", "finetune.pooling=cls", "finetune.epochs=1"]
    flags = _flags(task, pretrain_steps=3)
    finetune.finetune_classify_from_scratch(task["recipe"], flags, sets, out)
    base = read_run_config(out / SCRATCH_DIR / "base")
    assert base.train.max_steps == 3
    assert base.train.lr == 5e-4  # --set train.* reaches both stages
    cfg = read_run_config(out)
    assert (cfg.train.lr, cfg.finetune.pooling, cfg.finetune.epochs) == (5e-4, "cls", 1.0)
    assert not (out / "domain_adapt").exists()  # its steps made the base; nothing adapts it


def test_finetune_max_steps_ends_the_classifier_schedule_early(task, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = ["finetune.max_steps=8"]  # 2 epochs would be 12 steps
    summary = finetune.finetune_classify_from_scratch(task["recipe"], _flags(task), sets, out)
    cfg = read_run_config(out)
    assert read_run_config(out / SCRATCH_DIR / "base").train.max_steps == 6  # the base's own
    assert (cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.eval_interval) == (8, 1, 6)
    assert summary["steps"] == 8
    assert summary["epochs"] == 1.33
    records = map(json.loads, (out / "metrics.jsonl").open(encoding="utf-8"))
    evaluated = [r["step"] for r in records if "val_loss" in r]
    assert evaluated == [0, 6, 8]  # every epoch, and the last step


def test_a_run_killed_while_its_base_pretrains_resumes_to_the_same_weights(
    task, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    flags = _flags(task, pretrain_steps=8)  # a base checkpoint every 2 steps
    finetune.finetune_classify_from_scratch(task["recipe"], flags, ["train.seed=3"], whole)
    base = whole / SCRATCH_DIR / "base"
    steps = sorted((base / layout.CHECKPOINTS_DIR).glob("step_*"))
    assert len(steps) >= 2, steps
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / SCRATCH_DIR / "base" / layout.CHECKPOINTS_DIR / steps[-1].name)
    (cut / SCRATCH_DIR / "base" / DONE_FILE).unlink()
    for name in (layout.CHECKPOINTS_DIR, layout.BEST_DIR):
        shutil.rmtree(cut / name, ignore_errors=True)
    for name in (layout.MODEL_FILE, layout.METRICS_FILE, layout.LABELS_FILE):
        (cut / name).unlink(missing_ok=True)
    finetune.resume_finetune(cut, [], "classify")
    for path in (f"{SCRATCH_DIR}/base/{layout.MODEL_FILE}", layout.MODEL_FILE):
        expected, got = load_file(str(whole / path)), load_file(str(cut / path))
        assert set(got) == set(expected)
        for key, tensor in expected.items():
            assert got[key].equal(tensor), f"{path}: {key}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base", "somewhere"], "not both"),
        ([], "--base RUN (or --from-scratch CONFIG)"),
        (["--nproc", "2"], "drop --nproc"),
    ],
)
def test_cli_refuses_base_with_from_scratch_neither_and_nproc(
    task, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    scratch = ["--from-scratch", str(task["recipe"])] if extra else []  # [] lacks both
    argv = ["finetune", "classify", *scratch, *extra, "--train", str(task["train"])]
    argv += ["--valid", str(task["valid"]), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_from_scratch_again(task, tmp_path: Path, capsys) -> None:
    argv = ["finetune", "classify", "--resume", str(tmp_path), "--from-scratch", "x.yaml"]
    assert main(argv) == 2
    assert "drop --from-scratch" in capsys.readouterr().err


def test_a_run_stopped_while_preparing_starts_over_and_resume_says_so(
    task, tmp_path: Path, capsys
) -> None:
    """Killed before config.json (its texts half prepared): --resume names the way on, and the
    same command again starts over without --overwrite; a directory holding anything else is
    still refused."""
    out = tmp_path / "run"
    (out / SCRATCH_DIR / "data").mkdir(parents=True)
    (out / SCRATCH_DIR / "train_text.txt").write_text("half", encoding="utf-8")
    assert main(["finetune", "classify", "--resume", str(out)]) == 2
    assert "run the same `finetune classify --from-scratch` command again" in (
        capsys.readouterr().err
    )
    summary = finetune.finetune_classify_from_scratch(task["recipe"], _flags(task), [], out)
    assert (out / layout.CONFIG_FILE).is_file()
    assert summary["steps"] > 0
    mine = tmp_path / "mine"
    (mine / SCRATCH_DIR).mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's", encoding="utf-8")
    argv = ["finetune", "classify", "--from-scratch", str(task["recipe"]), "--out", str(mine)]
    argv += ["--train", str(task["train"]), "--valid", str(task["valid"])]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "the user's"
