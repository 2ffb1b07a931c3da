"""BERT-mini: MLM + NSP pretraining on the built-in corpus for a fixed wall budget, then
fine-tuning on a real text-classification task, each next to a simple baseline.

    python benchmarks/bert_pretrain_finetune.py [--minutes 12] [--work runs/bench-bert]

1. `prepare --tokenizer wordpiece` on builtin:python-docs (CPython's reference docs and stdlib
   docstrings), vocabulary 8192.
2. Pretrain configs/bert-mini.yaml (4 layers, hidden 256, 4 heads, 128 tokens, mlm+nsp). A
   40-step calibration run measures the seconds per step and per evaluation on this machine
   now; max_steps is then set so that training fits the --minutes budget (the lr schedule
   needs its length up front; other load on the machine can still stretch it).
   Reported: MLM accuracy on 40 fresh validation batches over all scored positions and on the
   [MASK]-replaced ones alone (the 10% left unchanged are free for a model that copies its
   input), next to the strongest trivial rule (copy the visible token, else predict the most
   frequent non-special training token) and the plain unigram rule; NSP accuracy vs 50%.
3. Task, built from text on this machine and not generated from templates: "which library does
   this docstring come from?" The first paragraph of every function/class docstring of numpy,
   scipy, matplotlib, scikit-learn and torch (read with `ast`, nothing imported; test suites
   skipped; 4 to 64 words). Whole source files go to train or test (about 1 in 5 files to
   test), so no file contributes to both sides; texts seen on the training side are dropped
   from test, and every class is capped (train 600, test 200). None of these packages is in
   the pretraining corpus (builtin:python-docs skips site-packages).
4. Fine-tune with `finetune classify` (each lr of --ft-lr, --ft-epochs, BERT-paper linear
   schedule, 10% warmup) and compare test accuracy and macro-F1 with TF-IDF (word 1-2 grams,
   sublinear tf) + logistic regression from scikit-learn. Three splits by source file: the
   validation split picks the epoch kept, the learning rate and the regression's C; the test
   split is scored once, on what validation picked.

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

from lmforge.config import load_config
from lmforge.data.batches import step_generator
from lmforge.data.mlm import BertVocab, mlm_batch
from lmforge.data.shards import TokenShards
from lmforge.jobs import evaluate as eval_jobs
from lmforge.jobs import finetune as finetune_job
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain
from lmforge.rundir.load import load_run
from lmforge.train.evaluators import encoder_metrics

LIBRARIES = ("numpy", "scipy", "matplotlib", "sklearn", "torch")
SKIPPED_PARTS = frozenset({"tests", "test", "testing", "_vendor", "externals", "benchmarks"})
TFIDF_C = (0.3, 1.0, 3.0, 10.0, 30.0)  # logistic regression's inverse regularisation, tuned
KINDS = ("all", "mask", "random", "kept")  # scored MLM positions by what the input shows
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "bert-mini.yaml"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pretraining


def prepare_corpus(work: Path, vocab_size: int) -> Path:
    data = work / "data"
    if not (data / "meta.json").is_file():
        opts = PrepareOptions(
            inputs=["builtin:python-docs"],
            out=data,
            tokenizer="wordpiece",
            vocab_size=vocab_size,
            overwrite=True,
        )
        prepare(opts)
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
    pretrain(load_config(CONFIG, sets), run, overwrite=True)
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seen = [0] + [r["tokens_seen"] for r in records if "tokens_per_s" in r]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    step_times = [(b - a) / rate for a, b, rate in zip(seen[:-1], seen[1:], rates, strict=True)]
    shutil.rmtree(run)
    return float(np.mean(step_times)), (total - sum(step_times)) / 2


def position_kinds(batch, mask_id: int) -> dict[str, torch.Tensor]:
    """The chosen (scored) positions of an MLM batch, split by what the input shows there:
    [MASK] (80%), a random token (10%) or the original token left visible (10%)."""
    chosen = batch.targets != -100
    masked = chosen & (batch.inputs == mask_id)
    kept = chosen & (batch.inputs == batch.targets)
    return {"all": chosen, "mask": masked, "random": chosen & ~masked & ~kept, "kept": kept}


def trivial_predictions(batch, mask_id: int, unigram: int) -> torch.Tensor:
    """The strongest trivial rule: copy the visible input token, else (on [MASK]) predict the
    most frequent training token. It is right on every kept position without any model."""
    return torch.where(
        batch.inputs == mask_id, torch.full_like(batch.inputs, unigram), batch.inputs
    )


@torch.no_grad()
def mlm_figures(run: Path, data: Path, batches: int = 40) -> dict[str, float]:
    """MLM/NSP accuracy on fresh validation batches, overall and on [MASK]-replaced positions
    alone, next to the copy-visible-else-unigram rule and the plain unigram rule."""
    cfg, model, tokenizer = load_run(run)
    model.eval()
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
    metrics = encoder_metrics(model, val)
    hits = {rule: {kind: 0 for kind in KINDS} for rule in ("model", "copy_else_unigram", "unigram")}
    totals = dict.fromkeys(KINDS, 0)
    for batch in val:
        hidden = model.encode(batch.inputs, batch.token_types, batch.attention_mask)
        chosen = batch.targets != -100
        predicted = torch.full_like(batch.targets, -1)
        predicted[chosen] = model.mlm_logits(hidden[chosen]).argmax(-1)
        rules = {
            "model": predicted,
            "copy_else_unigram": trivial_predictions(batch, vocab.mask_id, most_frequent),
            "unigram": torch.full_like(batch.targets, most_frequent),
        }
        for kind, where in position_kinds(batch, vocab.mask_id).items():
            totals[kind] += int(where.sum())
            for rule, guess in rules.items():
                hits[rule][kind] += int((guess[where] == batch.targets[where]).sum())
    figures = {
        f"{rule}_{kind}_accuracy": hits[rule][kind] / max(totals[kind], 1)
        for rule in hits
        for kind in KINDS
    }
    return {
        "mlm_accuracy": metrics["val_mlm_accuracy"],
        "mlm_loss": metrics["val_mlm_loss"],
        "nsp_accuracy": metrics["val_nsp_accuracy"],
        **figures,
        "unigram_token": tokenizer.vocab()[most_frequent],
        **{f"positions_{kind}": totals[kind] for kind in KINDS},
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
) -> tuple[list[dict], list[dict], list[dict]]:
    """Train/validation/test rows {"text", "label"}, split by source file (about 3/5, 1/5,
    1/5 of the files), capped per class (validation and test at test_cap each). Validation picks
    epochs and learning rates; test is read once, for the figures."""
    rng = random.Random(seed)
    split: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for package in LIBRARIES:
        rows: dict[str, dict[str, str]] = {side: {} for side in split}
        for file, text in docstring_summaries(package):
            bucket = zlib.crc32(f"{package}/{file}".encode()) % 5
            side = "test" if bucket == 0 else "valid" if bucket == 1 else "train"
            rows[side].setdefault(text, package)
        seen: set[str] = set()
        for side in split:  # a text seen on an earlier side is dropped from the later ones
            texts = [t for t in rows[side] if t not in seen]
            seen.update(rows[side])
            rng.shuffle(texts)
            cap = train_cap if side == "train" else test_cap
            split[side] += [{"text": t, "label": package} for t in texts[:cap]]
    # a text found in two libraries has no single answer
    label_sets: dict[str, set[str]] = {}
    for row in (r for rows in split.values() for r in rows):
        label_sets.setdefault(row["text"], set()).add(row["label"])
    kept = {
        side: [r for r in rows if len(label_sets[r["text"]]) == 1] for side, rows in split.items()
    }
    rng.shuffle(kept["train"])
    return kept["train"], kept["valid"], kept["test"]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tfidf_baseline(train: list[dict], valid: list[dict], test: list[dict]) -> dict[str, float]:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, its C picked on valid."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform([r["text"] for r in train])
    y_train = [r["label"] for r in train]

    def fitted(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)

    def scores(classifier: LogisticRegression, rows: list[dict]) -> tuple[float, float]:
        predicted = classifier.predict(vectorizer.transform([r["text"] for r in rows]))
        gold = [r["label"] for r in rows]
        return accuracy_score(gold, predicted), f1_score(gold, predicted, average="macro")

    valid_accuracy = {c: scores(fitted(c), valid)[0] for c in TFIDF_C}
    best_c = max(valid_accuracy, key=valid_accuracy.__getitem__)
    accuracy, macro_f1 = scores(fitted(best_c), test)
    return {
        "C": best_c,
        "valid_accuracy": float(valid_accuracy[best_c]),
        "accuracy": float(accuracy),
        "macro_f1": float(macro_f1),
    }


def finetune(
    base: Path, files: tuple[Path, Path, Path], out: Path, lr: float, extra: list[str], args
) -> dict:
    """`finetune classify` on files (train, valid, test): valid picks the epoch kept, test is
    scored once on that epoch with `evaluate --classify`."""
    sets = [
        f"train.lr={lr}",
        f"finetune.epochs={args.ft_epochs}",
        "model.dropout=0.1",  # BERT's fine-tuning dropout (pretraining ran without)
        f"train.seed={args.seed}",
        "train.progress=false",
        *extra,
    ]
    inputs = {
        "train_file": str(files[0]),
        "valid_file": str(files[1]),
        "text_column": "text",
        "label_column": "label",
    }
    start = time.perf_counter()
    cfg = finetune_job.resolve("classify", base, None, sets, inputs)
    summary = finetune_job.finetune_classify(cfg, out, overwrite=True)
    seconds = time.perf_counter() - start
    test = eval_jobs.evaluate_classifier(out, files[2])
    print(test["report"], file=sys.stderr)
    return {
        "lr": lr,
        "valid_accuracy": summary["metrics"]["accuracy"],
        "accuracy": test["metrics"]["accuracy"],
        "macro_f1": test["metrics"]["macro_f1"],
        "best_epoch": summary["best_epoch"],
        "epochs": summary["epochs"],
        "seconds": round(seconds, 1),
    }


def task_files(work: Path, seed: int) -> tuple[tuple[Path, Path, Path], dict]:
    """The task written as train/valid/test JSONL under work/task, and its description."""
    rows = dict(zip(("train", "valid", "test"), build_task(seed), strict=True))
    task_dir = work / "task"
    task_dir.mkdir(parents=True, exist_ok=True)
    files = tuple(write_jsonl(r, task_dir / f"{side}.jsonl") for side, r in rows.items())
    test = rows["test"]
    description = {
        "name": "docstring -> library (" + ", ".join(LIBRARIES) + ")",
        **{side: len(r) for side, r in rows.items()},
        "majority_class_accuracy": max(sum(r["label"] == lib for r in test) for lib in LIBRARIES)
        / len(test),
    }
    return files, description


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="pretraining wall budget")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-bert"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument(
        "--ft-lr",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[1e-4],
        help="learning rates to try, comma-separated; validation accuracy picks one",
    )
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
    pretrain(load_config(CONFIG, pretrain_sets(data, max_steps, args.seed)), run, True)
    pretrain_minutes = (time.perf_counter() - start) / 60
    mlm = mlm_figures(run, data)
    log(json.dumps(mlm))

    files, task = task_files(args.work, args.seed)
    rows = [[json.loads(line) for line in f.read_text().splitlines()] for f in files]
    baseline = tfidf_baseline(*rows)
    log(f"TF-IDF + logistic regression: {baseline}")
    tuned = [
        finetune(run, files, args.work / f"classifier-{lr}", lr, [], args) for lr in args.ft_lr
    ]
    for result in tuned:
        log(f"fine-tuned at lr {result['lr']}: {result}")
    best = max(tuned, key=lambda r: r["valid_accuracy"])
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
        "task": task,
        "finetune": best,
        "finetune_lr_search": tuned,
        "tfidf_logreg": baseline,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
