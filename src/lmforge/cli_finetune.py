"""The `finetune classify|lm|sft` and `lora merge` verbs of the command line."""

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge import finetune_lm, jobs, multitask
from lmforge.errors import LMForgeError

DESCRIPTION = """Fine-tune a run. Every task takes --config FILE and --set section.key=value
(train.*, finetune.*, lora.*) like pretrain; --lora-r N trains low-rank adapters only (the run
then holds a small adapter.safetensors over its base run).

  classify  a pretrained BERT (pooled [CLS]) or GPT (last real token) on labelled text: .csv,
            .tsv as GLUE ships it, or .jsonl. BERT-paper defaults: AdamW, lr 5e-5, 3 epochs,
            10% warmup then linear decay; evaluates after every epoch and keeps the best
            (train.best_metric, default val_accuracy; train.patience > 0 stops early).
  lm        continued pretraining of a GPT on new text prepared with its tokenizer
            (lmforge prepare --tokenizer-file BASE/tokenizer.json); lr 1e-4, 500 steps.
  sft       a GPT learns prompt -> completion pairs from JSONL ({"prompt", "completion"} or
            {"messages": [...]}); loss on completion tokens only, short examples packed;
            scored at the end by generation: exact match, BLEU and chrF on --valid.
  multitask one shared body, a classifier head per --task NAME=FILE; each step trains one task
            (p ∝ n^(1/finetune.task_temperature)); per-task and mean scores every epoch."""


def add_finetune(verbs: argparse._SubParsersAction, config_keys: str) -> None:
    p = verbs.add_parser(
        "finetune",
        help="fine-tune a run: classifier, continued pretraining, prompt -> completion",
        description=DESCRIPTION,
        epilog=config_keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    classify = tasks.add_parser("classify", help="one label per text (or pair)")
    classify.add_argument("--train", type=Path, required=True, metavar="FILE")
    classify.add_argument("--valid", type=Path, required=True, metavar="FILE")
    classify.add_argument("--text-column", help="column with the text (default: sentence)")
    classify.add_argument("--text-pair-column", help="column with the second text of pairs")
    classify.add_argument("--label-column", help="column with the label (default: label)")
    classify.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        help="balanced weighs each class's loss by n / (classes · count): for imbalanced data",
    )
    lm = tasks.add_parser("lm", help="continued pretraining on prepared text")
    lm.add_argument("--data", type=Path, required=True, help="data directory (lmforge prepare)")
    sft = tasks.add_parser("sft", help="prompt -> completion pairs from JSONL")
    sft.add_argument("--train", type=Path, required=True, metavar="FILE", help="JSONL pairs")
    sft.add_argument("--valid", type=Path, required=True, metavar="FILE", help="JSONL pairs")
    sft.add_argument("--no-pack", action="store_true", help="one example per row, padded")
    sft.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed JSONL lines (counted)"
    )
    multitask = tasks.add_parser("multitask", help="several classification tasks, one body")
    multitask.add_argument(
        "--task",
        dest="tasks",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a task and its YAML (train_file, valid_file, text_column, label_column, "
        "text_pair_column); repeat for each task",
    )
    for task in (lm, sft):
        task.add_argument("--freeze-layers", type=int, help="keep the first N blocks frozen")
        task.add_argument("--freeze-embeddings", action="store_true", help="keep them frozen")
    for task in (classify, lm, sft, multitask):
        _common(task)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, metavar="RUN", help="pretrained run")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument(
        "--config", type=Path, help="YAML/JSON/TOML config (train.*, finetune.*, lora.*)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    p.add_argument("--lora-r", type=int, help="LoRA rank (e.g. 8); adapters only train")
    p.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default 16)")
    p.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input")
    p.add_argument("--lora-targets", help="layers to adapt, e.g. q,k,v,o (default) or q,v,fc")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _lora_sets(args: argparse.Namespace) -> list[str]:
    flags = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
    flags["targets"] = args.lora_targets
    return [f"lora.{key}={value}" for key, value in flags.items() if value is not None]


def run_finetune(args: argparse.Namespace) -> None:
    sets = [*args.set, *_lora_sets(args)]
    if args.task == "classify":
        _run_classify(args, sets)
        return
    if args.task == "multitask":
        _run_multitask(args, sets)
        return
    inputs: dict[str, Any] = {}
    if args.freeze_layers is not None:
        inputs["freeze_layers"] = args.freeze_layers
    if args.freeze_embeddings:
        inputs["freeze_embeddings"] = True
    if args.task == "lm":
        sets.append(f"data.dir={args.data}")
        cfg = finetune_lm.lm_config(args.base, args.config, sets, inputs)
        summary = finetune_lm.finetune_lm(cfg, args.out, args.overwrite)
    else:
        inputs.update(train_file=str(args.train), valid_file=str(args.valid))
        inputs.update(pack=not args.no_pack, skip_bad_lines=args.skip_bad_lines)
        cfg = finetune_lm.lm_config(args.base, args.config, sets, inputs)
        summary = finetune_lm.finetune_sft(cfg, args.out, args.overwrite)
    print(
        f"fine-tuned {summary['steps']} steps -> {summary['run_dir']}: val loss "
        f"{summary['first_val_loss']:.4f} -> {summary['last_val_loss']:.4f}"
        + (f" (LoRA r={summary['lora_r']})" if summary["lora_r"] else "")
    )
    if "generation" in summary:
        scores = summary["generation"]
        print(
            f"generation on {scores['examples']} validation pairs: exact match "
            f"{scores['exact_match']:.3f}, BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}"
        )


def _run_multitask(args: argparse.Namespace, sets: list[str]) -> None:
    files = {}
    for item in args.tasks:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise LMForgeError(f"--task {item!r}: write NAME=FILE, e.g. --task sst=sst.yaml")
        if name in files:
            raise LMForgeError(f"--task {name} is given twice")
        files[name] = Path(file)
    cfg = multitask.multitask_config(args.base, args.config, sets)
    summary = multitask.finetune_multitask(cfg, files, args.out, args.overwrite)
    best = summary["best"]
    print(f"fine-tuned {summary['steps']} steps on {len(files)} tasks -> {summary['run_dir']}")
    drawn = summary["batches_per_task"]
    for name in files:
        print(
            f"  {name}: accuracy {best[f'val_{name}_accuracy']:.4f}, "
            f"macro-F1 {best[f'val_{name}_macro_f1']:.4f}, "
            f"{drawn[name]} of {sum(drawn.values())} training batches"
        )
    print(f"  mean accuracy {best['val_accuracy']:.4f} (best at step {best['step']})")


def _run_classify(args: argparse.Namespace, sets: list[str]) -> None:
    """Fine-tune, then print the best epoch's report and confusion matrix."""
    flags = {
        "train_file": str(args.train),
        "valid_file": str(args.valid),
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
        "class_weights": args.class_weights,
    }
    inputs = {key: value for key, value in flags.items() if value is not None}
    summary = jobs.finetune(args.base, args.config, sets, inputs, args.out, args.overwrite)
    metrics = summary["metrics"]
    print(
        f"fine-tuned {summary['steps']} steps ({summary['epochs']} epochs) on "
        f"{summary['train_examples']} examples -> {summary['run_dir']}"
    )
    print(
        f"best epoch {summary['best_epoch']} by {summary['best_metric']}: accuracy "
        f"{metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on "
        f"{summary['valid_examples']} validation examples"
    )
    print(summary["report"])
    print(summary["confusion_matrix"])
    print(f"confusion matrix plot: {summary['confusion_plot']}")


def add_lora(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "lora",
        help="fold a run's LoRA adapters into its base weights",
        description="merge: write a full run whose weights are base + (alpha / r) · B A, so it no "
        "longer needs the base run (and exports as a plain model).",
    )
    p.add_argument("action", choices=["merge"])
    p.add_argument("run", type=Path, help="adapter run directory")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run_lora(args: argparse.Namespace) -> None:
    summary = finetune_lm.merge_run(args.run, args.out, args.overwrite)
    print(f"merged {args.run} -> {summary['out']}: {summary['params']:,} parameters")


def print_sft_scores(scores: dict[str, Any], as_json: bool) -> None:
    record = {k: v for k, v in scores.items() if k != "samples"}
    if as_json:
        print(json.dumps(record))
        return
    for sample in scores["samples"]:
        print(f"prompt: {sample['prompt']!r}\noutput: {sample['output']!r}\n")
    print(
        f"{scores['examples']} pairs: exact match {scores['exact_match']:.3f}, "
        f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}"
    )
