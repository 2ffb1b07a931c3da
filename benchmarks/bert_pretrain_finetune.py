"""BERT-mini: MLM + NSP pretraining on the built-in corpus for a fixed wall budget, then
fine-tuning on a real text-classification task, each next to a simple baseline.

    python benchmarks/bert_pretrain_finetune.py [--minutes 12] [--work runs/bench-bert]

1. `prepare --tokenizer wordpiece` on builtin:python-docs (CPython's reference docs and stdlib
   docstrings), vocabulary 8192.
2. Pretrain configs/bert-mini.yaml (4 layers, hidden 256, 4 heads, 128 tokens, mlm+nsp). A
   40-step calibration run measures the seconds per step and per evaluation on this machine
   now; max_steps is then set so that training fits the --minutes budget (the lr schedule
   needs its length up front; other load on the machine can still stretch it).
   Reported: MLM accuracy on 40 fresh validation batches vs the unigram baseline (always
   predict the most frequent non-special training token), and NSP accuracy vs 50%.
3. Task, built from text on this machine and not generated from templates: "which library does
   this docstring come from?" The first paragraph of every function/class docstring of numpy,
   scipy, matplotlib, scikit-learn and torch (read with `ast`, nothing imported; test suites
   skipped; 4 to 64 words). Whole source files go to train or test (about 1 in 5 files to
   test), so no file contributes to both sides; texts seen on the training side are dropped
   from test, and every class is capped (train 600, test 200). None of these packages is in
   the pretraining corpus (builtin:python-docs skips site-packages).
4. Fine-tune with `finetune classify` (lr --ft-lr, --ft-epochs, BERT-paper linear schedule,
   10% warmup, best epoch kept) and compare test accuracy and macro-F1 with TF-IDF (word 1-2
   grams, sublinear tf) + logistic regression from scikit-learn on the same split. The held-out
   files serve as the validation split that picks the best epoch, as in GLUE dev reporting.

The last stdout line is JSON.
"""

import argparse
import ast
import json
import random
import shutil
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from lmforge import checkpoint as ckpt
from lmforge import jobs, training
from lmforge.config import load_config
from lmforge.data.batches import step_generator
from lmforge.data.mlm import BertVocab, mlm_batch
from lmforge.data.shards import TokenShards

LIBRARIES = ("numpy", "scipy", "matplotlib", "sklearn", "torch")
SKIPPED_PARTS = frozenset({"tests", "test", "testing", "_vendor", "externals", "benchmarks"})
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "bert-mini.yaml"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pretraining


def prepare_corpus(work: Path, vocab_size: int) -> Path:
    data = work / "data"
    if not (data / "meta.json").is_file():
        opts = jobs.PrepareOptions(
            inputs=["builtin:python-docs"],
            out=data,
            tokenizer="wordpiece",
            vocab_size=vocab_size,
            overwrite=True,
        )
        jobs.prepare(opts)
    return data


def pretrain_sets(data: Path, max_steps: int, seed: int) -> list[str]:
    every = max(1, max_steps // 10)
    return [
        f"data.dir={data}",
        f"train.max_steps={max_steps}",
        f"train.warmup_steps={min(100, max_steps // 10)}",
        f"train.eval_interval={every}",
        f"train.checkpoint_interval={max_steps}",
        "train.eval_batches=10",
        f"train.seed={seed}",
        "train.progress=false",
    ]


def calibrate(work: Path, data: Path, seed: int, steps: int = 40) -> tuple[float, float]:
    """(mean seconds per training step, seconds per evaluation), from a short calibration run.

    The step mean keeps the occasional slow step (a median would not); everything else the run
    spent (setup, its two evaluations, the checkpoint) is charged to the two evaluations.
    """
    sets = [*pretrain_sets(data, steps, seed), "train.log_interval=1"]
    sets.append(f"train.eval_interval={steps}")
    run = work / "calibration"
    start = time.perf_counter()
    jobs.pretrain(load_config(CONFIG, sets), run, overwrite=True)
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seen = [0] + [r["tokens_seen"] for r in records if "tokens_per_s" in r]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    step_times = [(b - a) / rate for a, b, rate in zip(seen[:-1], seen[1:], rates, strict=True)]
    shutil.rmtree(run)
    return float(np.mean(step_times)), (total - sum(step_times)) / 2


@torch.no_grad()
def mlm_figures(run: Path, data: Path, batches: int = 40) -> dict[str, float]:
    """MLM/NSP accuracy on fresh validation batches, and the most-frequent-token baseline."""
    cfg, model, tokenizer = ckpt.load_run(run)
    shards = TokenShards(data)
    vocab = BertVocab.from_tokenizer(tokenizer)
    counts = sum(np.bincount(a, minlength=tokenizer.vocab_size) for a in shards.arrays["train"])
    counts[vocab.special.numpy()] = 0
    most_frequent = int(counts.argmax())
    corpus = shards.sentences("val")
    val = [
        mlm_batch(corpus, 32, cfg.model.block_size, step_generator(99, 7, i), vocab)
        for i in range(batches)
    ]
    metrics = training.encoder_metrics(model, val)
    targets = torch.cat([b.targets[b.targets != -100] for b in val])
    return {
        "mlm_accuracy": metrics["val_mlm_accuracy"],
        "mlm_loss": metrics["val_mlm_loss"],
        "nsp_accuracy": metrics["val_nsp_accuracy"],
        "unigram_baseline_accuracy": float((targets == most_frequent).float().mean()),
        "unigram_baseline_token": tokenizer.vocab()[most_frequent],
        "masked_tokens_scored": int(targets.numel()),
    }


# ---------------------------------------------------------------- the classification task


def docstring_summaries(package: str) -> list[tuple[str, str]]:
    """(source file, first docstring paragraph) of every function and class of a package."""
    root = Path(sysconfig.get_paths()["purelib"]) / package
    found = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_PARTS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                text = " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""
                if 4 <= len(text.split()) <= 64 and "\t" not in text:
                    found.append((str(path.relative_to(root)), text))
    return found


def build_task(
    seed: int, train_cap: int = 600, test_cap: int = 200
) -> tuple[list[dict], list[dict]]:
    """Train/test rows {"text", "label"}, split by source file, capped per class."""
    rng = random.Random(seed)
    train, test = [], []
    for package in LIBRARIES:
        rows = {"train": {}, "test": {}}
        for file, text in docstring_summaries(package):
            side = "test" if zlib.crc32(f"{package}/{file}".encode()) % 5 == 0 else "train"
            rows[side].setdefault(text, package)
        kept_train = list(rows["train"])
        kept_test = [t for t in rows["test"] if t not in rows["train"]]
        for texts, cap, out in ((kept_train, train_cap, train), (kept_test, test_cap, test)):
            rng.shuffle(texts)
            out += [{"text": t, "label": package} for t in texts[:cap]]
    # a text found in two libraries has no single answer
    label_sets: dict[str, set[str]] = {}
    for row in train + test:
        label_sets.setdefault(row["text"], set()).add(row["label"])
    keep = [[r for r in rows if len(label_sets[r["text"]]) == 1] for rows in (train, test)]
    rng.shuffle(keep[0])
    return keep[0], keep[1]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tfidf_baseline(train: list[dict], test: list[dict]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform([r["text"] for r in train])
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(x_train, [r["label"] for r in train])
    predicted = classifier.predict(vectorizer.transform([r["text"] for r in test]))
    gold = [r["label"] for r in test]
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro")),
    }


def finetune(base: Path, train: Path, test: Path, out: Path, args: argparse.Namespace) -> dict:
    sets = [
        f"train.lr={args.ft_lr}",
        f"finetune.epochs={args.ft_epochs}",
        "model.dropout=0.1",  # BERT's fine-tuning dropout (pretraining ran without)
        f"train.seed={args.seed}",
        "train.progress=false",
    ]
    inputs = {
        "train_file": str(train),
        "valid_file": str(test),
        "text_column": "text",
        "label_column": "label",
    }
    start = time.perf_counter()
    summary = jobs.finetune(base, None, sets, inputs, out, overwrite=True)
    print(summary["report"], file=sys.stderr)
    print(summary["confusion_matrix"], file=sys.stderr)
    return {
        "accuracy": summary["metrics"]["accuracy"],
        "macro_f1": summary["metrics"]["macro_f1"],
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "seconds": round(time.perf_counter() - start, 1),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="pretraining wall budget")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-bert"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--ft-epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if not 0 < args.minutes <= 15:
        parser.error("--minutes must be in (0, 15]")
    args.work.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    data = prepare_corpus(args.work, args.vocab_size)
    log(f"prepared {data} in {time.perf_counter() - start:.0f} s")
    step_s, eval_s = calibrate(args.work, data, args.seed)
    # 11 evaluations (at the start and every tenth of the run), the rest training steps
    max_steps = max(20, int((args.minutes * 60 - 11 * eval_s) / step_s))
    log(f"{step_s:.2f} s/step, {eval_s:.1f} s/eval -> {max_steps} steps in {args.minutes} min")
    run = args.work / "bert-mini"
    start = time.perf_counter()
    jobs.pretrain(load_config(CONFIG, pretrain_sets(data, max_steps, args.seed)), run, True)
    pretrain_minutes = (time.perf_counter() - start) / 60
    mlm = mlm_figures(run, data)
    log(json.dumps(mlm))

    train_rows, test_rows = build_task(args.seed)
    task_dir = args.work / "task"
    task_dir.mkdir(exist_ok=True)
    train_file = write_jsonl(train_rows, task_dir / "train.jsonl")
    test_file = write_jsonl(test_rows, task_dir / "test.jsonl")
    baseline = tfidf_baseline(train_rows, test_rows)
    log(f"TF-IDF + logistic regression: {baseline}")
    tuned = finetune(run, train_file, test_file, args.work / "classifier", args)
    result = {
        "pretrain": {
            "model": "bert-mini (4 layers, hidden 256, 4 heads, seq 128), mlm+nsp",
            "corpus": "builtin:python-docs, wordpiece",
            "vocab_size": args.vocab_size,
            "budget_minutes": args.minutes,
            "minutes": round(pretrain_minutes, 2),
            "steps": max_steps,
            "seconds_per_step": round(step_s, 3),
            "seconds_per_eval": round(eval_s, 2),
            **mlm,
        },
        "task": {
            "name": "docstring -> library (" + ", ".join(LIBRARIES) + ")",
            "train": len(train_rows),
            "test": len(test_rows),
            "majority_class_accuracy": max(
                sum(r["label"] == lib for r in test_rows) for lib in LIBRARIES
            )
            / len(test_rows),
        },
        "finetune": {"lr": args.ft_lr, **tuned},
        "tfidf_logreg": baseline,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
