"""BERT end to end on the command line: prepare --tokenizer wordpiece -> pretrain (mlm+nsp) ->
finetune classify -> predict, a GPT base fine-tuned too, and each bad input's `error:`."""

import dataclasses
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import ModelConfig, RunConfig, from_dict
from lmforge.data.mlm import continuation_table
from lmforge.jobs.session import batch_sources, open_data
from lmforge.model import BERT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.tokenizer import Tokenizer

from .conftest import assert_user_error

FILLER = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "across",
    "and",
    "birds",
    "sang",
    "songs",
    "in",
    "tall",
    "trees",
    "near",
    "old",
    "houses",
]
BERT_SETS = [
    f"--set={item}"
    for item in (
        "model.arch=bert",
        "train.objective=mlm+nsp",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=8",
        "train.max_steps=40",
        "train.warmup_steps=4",
        "train.eval_interval=20",
        "train.eval_batches=2",
        "train.checkpoint_interval=20",
        "train.best_metric=val_mlm_accuracy",
        "train.progress=false",
    )
]
FINETUNE_SETS = [
    f"--set={item}"
    for item in (
        "train.lr=3e-3",
        "finetune.epochs=10",
        "train.batch_size=16",
        "train.patience=4",
        "train.progress=false",
    )
]


def _sentence(rng: random.Random, key: str = "") -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), key or rng.choice(("green fields", "blue skies")))
    return " ".join(words)


def _write_tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def _separable_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Label pos exactly when the text says "green fields", neg when "blue skies"."""
    labels = [rng.choice(("pos", "neg")) for _ in range(n)]
    keys = {"pos": "green fields", "neg": "blue skies"}
    return [(_sentence(rng, keys[y]), y) for y in labels]


@pytest.fixture(scope="session")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-step mlm+nsp pretraining of a tiny BERT on wordpiece data (about 2 s)."""
    root = tmp_path_factory.mktemp("bert")
    rng = random.Random(0)
    corpus = root / "corpus.jsonl"
    docs = [" ".join(_sentence(rng).capitalize() + "." for _ in range(8)) for _ in range(60)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    data = root / "data"
    args = ["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer", "wordpiece"]
    assert main([*args, "--vocab-size", "200"]) == 0
    run = root / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *BERT_SETS]) == 0
    return run


@pytest.fixture(scope="session")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("task")
    rng = random.Random(1)
    train = _write_tsv(root / "train.tsv", _separable_rows(rng, 160))
    return train, _write_tsv(root / "dev.tsv", _separable_rows(rng, 40))


@pytest.fixture(scope="session")
def classifier_run(bert_run: Path, task_files: tuple[Path, Path]) -> Path:
    out = bert_run.parent / "classifier"
    train, dev = task_files
    args = ["finetune", "classify", "--base", str(bert_run), "--train", str(train)]
    args += ["--valid", str(dev), "--text-column", "sentence", "--label-column", "label"]
    assert main([*args, "--out", str(out), *FINETUNE_SETS]) == 0
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_prepare_wordpiece_records_sentences_and_lowercases(bert_run: Path) -> None:
    meta = json.loads((bert_run.parent / "data" / "meta.json").read_text())
    assert meta["tokenizer_kind"] == "wordpiece"
    assert meta["splits"]["train"]["sentences"]["documents"] > 1
    tokenizer = Tokenizer.load(bert_run / "tokenizer.json")
    assert tokenizer.encode("The CAT") == tokenizer.encode("the cat")


def test_bert_pretraining_loss_falls_and_reports_mlm_and_nsp(bert_run: Path) -> None:
    config = json.loads((bert_run / "config.json").read_text())
    assert config["model"]["arch"] == "bert"
    assert config["train"]["objective"] == "mlm+nsp"
    evals = [r for r in _records(bert_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    for key in ("val_mlm_loss", "val_mlm_accuracy", "val_nsp_loss", "val_nsp_accuracy"):
        assert all(0 <= r[key] < 10 for r in evals), key
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert evals[-1]["val_mlm_accuracy"] > evals[0]["val_mlm_accuracy"]
    assert (bert_run / "best" / "model.safetensors").is_file()


def test_finetune_classify_learns_a_separable_task(classifier_run: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "labels.json",
        "metrics.jsonl",
        "loss.png",
        "confusion_matrix.png",
    ):
        assert (classifier_run / name).is_file(), name
    assert json.loads((classifier_run / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    config = json.loads((classifier_run / "config.json").read_text())
    assert config["train"]["objective"] == "classify"
    assert config["train"]["schedule"] == "linear"
    assert config["finetune"]["base"].endswith("run")
    evals = [r for r in _records(classifier_run) if "val_accuracy" in r]
    assert max(r["val_accuracy"] for r in evals) >= 0.95
    assert all(len(r["val_confusion_matrix"]) == 2 for r in evals)
    # patience 4: it stopped four evaluations after the best one, before 10 epochs
    best = max(range(len(evals)), key=lambda i: (evals[i]["val_accuracy"], -i))
    assert len(evals) - 1 == best + 4
    assert evals[-1]["step"] < 100


def test_predict_writes_labels_and_probabilities(
    classifier_run: Path, task_files: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    _, dev = task_files
    out = classifier_run.parent / "predictions.jsonl"
    args = ["predict", str(classifier_run), "--input", str(dev), "--output", str(out)]
    assert main([*args, "--label-column", "label", "--batch-size", "7"]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [line.split("\t") for line in dev.read_text().splitlines()[1:]]
    assert [r["text"] for r in rows] == [text for text, _ in gold]
    assert [r["label"] for r in rows] == [label for _, label in gold]
    for row in rows:
        assert set(row["probabilities"]) == {"neg", "pos"}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert max(row["probabilities"], key=row["probabilities"].get) == row["label"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".predictions")]
    code = main(args)  # the output exists: refused without --overwrite
    assert_user_error(code, capsys, "--overwrite")


def test_a_gpt_base_fine_tunes_too(
    trained_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, dev = task_files
    out = tmp_path / "gpt-classifier"
    args = ["finetune", "classify", "--base", str(trained_run), "--train", str(train)]
    args += ["--valid", str(dev), "--out", str(out), "--set", "finetune.epochs=1"]
    assert main([*args, "--class-weights", "balanced", "--set", "train.progress=false"]) == 0
    assert "accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["arch"] == "gpt"
    assert config["finetune"]["class_weights"] == "balanced"
    predictions = tmp_path / "p.jsonl"
    assert main(["predict", str(out), "--input", str(dev), "--output", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 40


# ---------------------------------------------------------------- bad input


def _finetune(base: Path, train: Path, dev: Path, out: Path, *extra: str) -> int:
    args = ["finetune", "classify", "--base", str(base), "--train", str(train)]
    return main([*args, "--valid", str(dev), "--out", str(out), *extra, *FINETUNE_SETS[3:]])


def test_a_missing_column_names_the_columns_found(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, dev = task_files
    code = _finetune(bert_run, train, dev, tmp_path / "x", "--text-column", "text")
    assert_user_error(code, capsys, "no column 'text'", "columns found: sentence, label")
    assert not (tmp_path / "x").exists()


def test_an_empty_split_is_refused(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, _ = task_files
    empty = _write_tsv(tmp_path / "empty.tsv", [])
    code = _finetune(bert_run, train, empty, tmp_path / "x")
    assert_user_error(code, capsys, "valid split", "has no examples")


def test_a_dev_label_absent_from_train_is_refused(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, _ = task_files
    dev = _write_tsv(tmp_path / "dev.tsv", [("green fields", "pos"), ("a cat", "neutral")])
    code = _finetune(bert_run, train, dev, tmp_path / "x")
    assert_user_error(code, capsys, "'neutral'", "training split lacks")


def test_over_long_texts_are_truncated_with_a_count(
    bert_run: Path,
    task_files: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, dev = task_files
    rng = random.Random(2)
    rows = _separable_rows(rng, 30)
    rows[:3] = [(" ".join(["the cat sat"] * 40) + " " + t, y) for t, y in rows[:3]]
    train = _write_tsv(tmp_path / "train.tsv", rows)
    code = _finetune(bert_run, train, dev, tmp_path / "x", "--set", "finetune.epochs=1")
    assert code == 0
    assert "train split: 3 of 30 examples truncated to 32 tokens" in caplog.text


def test_a_base_whose_tokenizer_lacks_bert_specials_is_refused(
    task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tokenizer = Tokenizer.train_char(["the cat sat on a mat, green fields and blue skies"])
    model_cfg = ModelConfig(
        arch="bert", n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size
    )
    base = tmp_path / "base"
    ckpt.write_run_files(base, RunConfig(model=model_cfg), tokenizer)
    ckpt.save_weights(BERT(model_cfg), base / layout.MODEL_FILE)
    train, dev = task_files
    code = _finetune(base, train, dev, tmp_path / "x")
    assert_user_error(code, capsys, "lacks [CLS], [SEP] or [PAD]", "--tokenizer wordpiece")


def test_runs_used_for_the_wrong_verb_are_refused(
    bert_run: Path, classifier_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["generate", str(classifier_run), "--prompt", "x"])
    assert_user_error(code, capsys, "fine-tuned classifier", "lmforge predict")
    code = main(["predict", str(bert_run), "--input", "x.tsv", "--output", str(tmp_path / "p")])
    assert_user_error(code, capsys, "is not a classifier")
    code = main(["evaluate", str(bert_run)])
    assert_user_error(code, capsys, "perplexity needs a causal GPT")


def test_objective_and_architecture_must_match(
    bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = bert_run.parent / "data"
    code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "a"), *BERT_SETS[:1]])
    assert_user_error(code, capsys, "train.objective=clm trains a causal GPT")
    sets = ["--set", "train.objective=mlm"]
    code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "b"), *sets])
    assert_user_error(code, capsys, "set model.arch=bert")


def test_fine_tune_config_keeps_the_base_model_and_derived_keys(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, dev = task_files
    code = _finetune(bert_run, train, dev, tmp_path / "x", "--set", "model.n_layer=4")
    assert_user_error(code, capsys, "model.n_layer comes from the base run")
    code = _finetune(bert_run, train, dev, tmp_path / "x", "--set", "train.max_steps=4")
    assert_user_error(code, capsys, "train.max_steps is set by the fine-tune", "finetune.epochs")
    code = _finetune(bert_run, train, dev, tmp_path / "x", "--set", "train.best_metric=val_ppl")
    assert_user_error(code, capsys, "not reported for objective classify", "val_macro_f1")


def test_sentence_pairs_fine_tune_and_predict_with_a_jsonl_file(
    bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = random.Random(3)
    rows = [{"first": _sentence(rng), "second": _sentence(rng), "label": i % 3} for i in range(48)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "pairs"
    args = ["finetune", "classify", "--base", str(bert_run), "--train", str(data)]
    args += ["--valid", str(data), "--text-column", "first", "--text-pair-column", "second"]
    assert main([*args, "--out", str(out), "--set", "finetune.epochs=1", *FINETUNE_SETS[4:]]) == 0
    assert json.loads((out / "labels.json").read_text())["labels"] == ["0", "1", "2"]
    predictions = tmp_path / "p.jsonl"
    assert main(["predict", str(out), "--input", str(data), "--output", str(predictions)]) == 0
    first = json.loads(predictions.read_text().splitlines()[0])
    assert first["text"] == rows[0]["first"]
    assert first["text_pair"] == rows[0]["second"]
    assert set(first["probabilities"]) == {"0", "1", "2"}


def test_evaluate_classify_reports_the_metrics_of_a_labelled_file(
    classifier_run: Path,
    task_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _, dev = task_files
    plot = tmp_path / "confusion.png"
    args = ["evaluate", str(classifier_run), "--classify", str(dev), "--plot", str(plot)]
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["accuracy"] >= 0.9
    assert sum(map(sum, record["confusion_matrix"])) == 40
    assert set(record) >= {"macro_precision", "macro_recall", "macro_f1", "labels"}
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 0
    assert "accuracy" in capsys.readouterr().out


def test_lora_classifier_trains_adapters_only_and_merges_to_the_same_predictions(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train, dev = task_files
    out, merged = tmp_path / "lora", tmp_path / "merged"
    args = ["finetune", "classify", "--base", str(bert_run), "--train", str(train)]
    args += ["--valid", str(dev), "--out", str(out), "--lora-r", "4", "--lora-alpha", "8"]
    assert main([*args, *FINETUNE_SETS]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert all("lora_" in name or name.startswith("classifier") for name in saved)
    assert (out / "model.safetensors").stat().st_size < (
        bert_run / "model.safetensors"
    ).stat().st_size / 5
    assert main(["lora", "merge", str(out), "--out", str(merged)]) == 0
    outputs = []
    for run in (out, merged):
        predictions = tmp_path / f"{run.name}.jsonl"
        assert main(["predict", str(run), "--input", str(dev), "--output", str(predictions)]) == 0
        outputs.append([json.loads(line) for line in predictions.read_text().splitlines()])
    for a, b in zip(*outputs, strict=True):
        assert a["label"] == b["label"]
        for label, p in a["probabilities"].items():
            assert b["probabilities"][label] == pytest.approx(p, abs=1e-4)
    other = tmp_path / "other.jsonl"
    code = main(
        ["predict", str(merged), "--input", str(dev), "--output", str(other), "--task", "x"]
    )
    assert_user_error(code, capsys, "--task is for runs made by `lmforge finetune multitask`")


def _length_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """A second task on the same text: short (3 filler words) or long (9)."""
    rows = []
    for _ in range(n):
        label = rng.choice(("short", "long"))
        words = [rng.choice(FILLER) for _ in range(3 if label == "short" else 9)]
        rows.append((" ".join(words), label))
    return rows


def test_multitask_trains_two_heads_on_one_body(
    bert_run: Path, task_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = random.Random(5)
    train, dev = task_files
    length_train = _write_tsv(tmp_path / "len_train.tsv", _length_rows(rng, 160))
    length_dev = _write_tsv(tmp_path / "len_dev.tsv", _length_rows(rng, 40))
    specs = {"topic": (train, dev), "length": (length_train, length_dev)}
    for name, (tr, dv) in specs.items():
        (tmp_path / f"{name}.yaml").write_text(f"train_file: {tr}\nvalid_file: {dv}\n")
    out = tmp_path / "mt"
    args = ["finetune", "multitask", "--base", str(bert_run), "--out", str(out)]
    args += [
        "--task",
        f"topic={tmp_path / 'topic.yaml'}",
        "--task",
        f"length={tmp_path / 'length.yaml'}",
    ]
    assert main([*args, *FINETUNE_SETS]) == 0
    printed = capsys.readouterr().out
    assert "topic: accuracy" in printed
    assert "length: accuracy" in printed
    evals = [r for r in _records(out) if "val_accuracy" in r]
    best = max(evals, key=lambda r: r["val_accuracy"])
    assert best["val_topic_accuracy"] >= 0.9
    assert best["val_length_accuracy"] >= 0.9
    assert best["val_accuracy"] == pytest.approx(
        (best["val_topic_accuracy"] + best["val_length_accuracy"]) / 2
    )
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks["length"]["labels"] == ["long", "short"]
    code = main([*args[:4], "--task", "topic", "--out", str(tmp_path / "x")])
    assert_user_error(code, capsys, "NAME=FILE")
    _each_head_predicts_and_evaluates(out, best, length_dev, dev, tmp_path, capsys)


def _each_head_predicts_and_evaluates(
    out: Path, best: dict, length_dev: Path, topic_dev: Path, tmp_path: Path, capsys
) -> None:
    """evaluate/predict --task pick one head of the multitask run, with its labels and columns;
    on the validation file the score is the one the best evaluation logged."""
    assert main(["evaluate", str(out), "--classify", str(length_dev), "--task", "length"]) == 0
    assert (
        main(["evaluate", str(out), "--classify", str(length_dev), "--task", "length", "--json"])
        == 0
    )
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["labels"] == ["long", "short"]
    assert record["accuracy"] == pytest.approx(best["val_length_accuracy"], abs=1e-6)
    predictions = tmp_path / "topic.jsonl"
    command = ["predict", str(out), "--input", str(topic_dev), "--output", str(predictions)]
    assert main([*command, "--task", "topic", "--label-column", "label"]) == 0
    assert f"accuracy {best['val_topic_accuracy']:.4f}" in capsys.readouterr().out
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert set(rows[0]["probabilities"]) == set(
        json.loads((out / "tasks.json").read_text())["topic"]["labels"]
    )
    code = main([*command, "--overwrite"])
    assert_user_error(code, capsys, "choose a head with --task NAME", "length, topic")
    code = main([*command, "--task", "sentiment", "--overwrite"])
    assert_user_error(code, capsys, "has no task 'sentiment'")


def test_whole_word_masking_is_a_data_switch(tmp_path: Path) -> None:
    """data.whole_word_masking=true: a masked `##` piece always has its whole word masked."""
    rng = random.Random(3)
    words = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9))) for _ in range(300)
    ]
    docs = [". ".join(" ".join(rng.choices(words, k=8)) for _ in range(6)) for _ in range(80)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    data = tmp_path / "data"
    args = ["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer", "wordpiece"]
    assert main([*args, "--vocab-size", "120"]) == 0  # most words split into pieces
    settings = {"arch": "bert", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 64}
    base = {"model": settings, "train": {"objective": "mlm", "batch_size": 8}}
    cfg = from_dict(RunConfig, {**base, "data": {"dir": str(data)}})
    shards, tokenizer = open_data(cfg)
    continuation = continuation_table(tokenizer)
    split_words = {}
    for whole_word in (False, True):
        switched = dataclasses.replace(cfg.data, whole_word_masking=whole_word)
        train_batch, _ = batch_sources(dataclasses.replace(cfg, data=switched), shards, tokenizer)
        split_words[whole_word] = 0
        for step in range(5):
            batch = train_batch(step, 0)
            ids = torch.where(batch.targets != -100, batch.targets, batch.inputs)
            masked = batch.targets != -100
            pieces = continuation[ids]
            for row, col in masked.nonzero().tolist():
                start, end = col, col + 1  # the word around the masked token
                while start > 0 and pieces[row, start]:
                    start -= 1
                while end < ids.shape[1] and pieces[row, end]:
                    end += 1
                split_words[whole_word] += int(not masked[row, start:end].all())
    assert split_words[False] > 10  # piece-level masking splits words
    assert split_words[True] == 0


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_task_temperature_sets_how_often_each_task_trains(
    bert_run: Path,
    task_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    temperature: float,
) -> None:
    """With 160 and 40 training examples, task i is drawn with p_i = n_i^(1/T) / Σ n_j^(1/T):
    p_topic = 0.941 at T = 0.5 and 0.667 at T = 2. The share of training batches each task got
    (printed by the CLI) follows it within 4 standard deviations of a binomial count."""
    train, dev = task_files
    rng = random.Random(7)
    small = _write_tsv(tmp_path / "len_train.tsv", _length_rows(rng, 40))
    small_dev = _write_tsv(tmp_path / "len_dev.tsv", _length_rows(rng, 20))
    for name, (tr, dv) in {"topic": (train, dev), "length": (small, small_dev)}.items():
        (tmp_path / f"{name}.yaml").write_text(f"train_file: {tr}\nvalid_file: {dv}\n")
    args = ["finetune", "multitask", "--base", str(bert_run), "--out", str(tmp_path / "mt")]
    args += ["--task", f"topic={tmp_path / 'topic.yaml'}"]
    args += ["--task", f"length={tmp_path / 'length.yaml'}"]
    sets = ["train.lr=3e-3", "finetune.epochs=8", "train.batch_size=16", "train.progress=false"]
    sets.append(f"finetune.task_temperature={temperature}")
    assert main([*args, *(f"--set={item}" for item in sets)]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"topic: .*, (\d+) of (\d+) training batches", printed)
    assert found, printed
    topic, total = int(found[1]), int(found[2])
    assert total == 8 * ((160 + 40) // 16)  # every step drew one batch
    p = 160 ** (1 / temperature) / (160 ** (1 / temperature) + 40 ** (1 / temperature))
    assert abs(topic / total - p) <= 4 * math.sqrt(p * (1 - p) / total), (topic, total, p)
