"""finetune classify --pretrain-steps: the base keeps learning its own objective on the training
texts (never the validation texts or any labels) before the classifier starts from it; the
switch changes the result; a run cut short while adapting resumes to the same weights."""

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.data.shards import TokenShards
from lmforge.jobs import finetune
from lmforge.jobs.domain_adapt import ADAPT_DIR, DATA_DIR, DONE_FILE
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain
from lmforge.rundir import layout
from lmforge.rundir.load import read_run_config
from lmforge.tokenizer import Tokenizer

from .test_sessions import BASE_SETS  # the same tiny base shape

CLASSIFY = ["train.progress=false", "train.batch_size=8", "finetune.epochs=2"]
GOOD, BAD = ["sunny", "bright", "warm"], ["rainy", "grey", "cold"]


def _table(path: Path, rows: int, offset: int, marker: str) -> Path:
    lines = ["sentence\tlabel"]
    for i in range(offset, offset + rows):
        words = GOOD if i % 2 == 0 else BAD
        lines.append(f"{marker} day {i} was {words[i % 3]}. It felt {words[(i + 1) % 3]}.\t{i % 2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    corpus = root / "corpus.txt"
    docs = [f"Note {i}. The weather was mild {i % 7}. People walked." for i in range(200)]
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    paths = {"root": root}
    for arch, kind in (("gpt", "bpe"), ("bert", "wordpiece")):
        data = root / f"data-{arch}"
        prepare(
            PrepareOptions(
                inputs=[str(corpus)],
                out=data,
                tokenizer=kind,
                vocab_size=300,
                documents="paragraph",
            )
        )
        sets = [*BASE_SETS, f"data.dir={data}"]
        if arch == "bert":
            sets += ["model.arch=bert", "train.objective=mlm+nsp"]
        paths[arch] = root / f"base-{arch}"
        pretrain(load_config(None, sets), paths[arch])
    paths["train"] = _table(root / "train.tsv", 48, 0, "trainmark")
    paths["valid"] = _table(root / "valid.tsv", 16, 100, "validmark")
    return paths


def _classify(b: dict[str, Path], arch: str, out: Path, sets: list[str]) -> dict[str, Any]:
    flags = {"train_file": str(b["train"]), "valid_file": str(b["valid"])}
    cfg = finetune.resolve("classify", b[arch], None, [*CLASSIFY, *sets], flags)
    return finetune.finetune_classify(cfg, out)


def _tensors(path: Path) -> dict[str, Any]:
    return load_file(str(path))


@pytest.mark.parametrize(("arch", "objective"), [("gpt", "clm"), ("bert", "mlm")])
def test_adaptation_trains_the_base_objective_on_the_training_texts_only(
    bases, tmp_path: Path, arch: str, objective: str
) -> None:
    out = tmp_path / "run"
    _classify(bases, arch, out, ["finetune.pretrain_steps=3"])
    adapted = out / ADAPT_DIR
    cfg = read_run_config(adapted)
    assert cfg.train.objective == objective
    assert cfg.train.max_steps == 3
    assert cfg.train.lr == 1e-4  # finetune.pretrain_lr's default, not the classifier's lr
    assert (adapted / DONE_FILE).is_file()
    shards = TokenShards(adapted / DATA_DIR)
    tokenizer = Tokenizer.load(adapted / DATA_DIR / layout.TOKENIZER_FILE)
    text = "".join(
        tokenizer.decode(np.concatenate(shards.arrays[s]).tolist()) for s in ("train", "val")
    )
    # every training row (days 0-47) once, no validation row (days 100-115)
    assert sorted(int(day) for day in re.findall(r"(\d+) was", text)) == list(range(48))
    assert (
        shards.meta["splits"]["train"]["documents"] + shards.meta["splits"]["val"]["documents"]
        == 48
    )
    assert "label" not in text  # no header
    assert "\t" not in text  # no label columns
    # the adapted body moved away from the base, and the classifier's run names the user's base
    base, moved = _tensors(bases[arch] / layout.MODEL_FILE), _tensors(adapted / layout.MODEL_FILE)
    assert any(not moved[k].equal(base[k]) for k in base)
    assert read_run_config(out).finetune.base == str(bases[arch])


def test_pretrain_steps_changes_the_classifier(bases, tmp_path: Path) -> None:
    for name, sets in (("plain", []), ("again", []), ("adapted", ["finetune.pretrain_steps=4"])):
        _classify(bases, "gpt", tmp_path / name, sets)
    assert not (tmp_path / "plain" / ADAPT_DIR).exists()
    plain, again, adapted = (
        _tensors(tmp_path / name / layout.MODEL_FILE) for name in ("plain", "again", "adapted")
    )
    assert all(plain[k].equal(again[k]) for k in plain)  # seeded: equal without the switch
    assert any(not plain[k].equal(adapted[k]) for k in plain)  # so the switch made this


def test_a_run_cut_short_while_adapting_resumes_to_the_same_weights(bases, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    sets = ["finetune.pretrain_steps=8", "train.seed=3"]
    flags = {"train_file": str(bases["train"]), "valid_file": str(bases["valid"])}
    cfg = finetune.resolve("classify", bases["gpt"], None, [*CLASSIFY, *sets], flags)
    # the adaptation checkpoints every quarter of its 8 steps
    finetune.finetune_classify(cfg, whole)
    adapt_checkpoints = sorted((whole / ADAPT_DIR / layout.CHECKPOINTS_DIR).glob("step_*"))
    assert len(adapt_checkpoints) >= 2, adapt_checkpoints
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    # killed during the adaptation: its last checkpoint, done.json and everything the
    # classifier wrote afterwards are missing
    shutil.rmtree(cut / ADAPT_DIR / layout.CHECKPOINTS_DIR / adapt_checkpoints[-1].name)
    (cut / ADAPT_DIR / DONE_FILE).unlink()
    for name in (layout.CHECKPOINTS_DIR, layout.BEST_DIR):
        shutil.rmtree(cut / name, ignore_errors=True)
    for name in (layout.MODEL_FILE, layout.METRICS_FILE, layout.LABELS_FILE):
        (cut / name).unlink(missing_ok=True)
    finetune.resume_finetune(cut, [], "classify")
    for path in (ADAPT_DIR + "/" + layout.MODEL_FILE, layout.MODEL_FILE):
        expected, got = _tensors(whole / path), _tensors(cut / path)
        assert set(got) == set(expected)
        for key, tensor in expected.items():
            assert got[key].equal(tensor), f"{path}: {key}"
