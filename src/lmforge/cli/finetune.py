"""`lmforge finetune classify | multitask | lm | sft`: their flags, and what they print."""

import argparse
from pathlib import Path
from typing import Any

from lmforge.cli.workers import add_nproc, started_workers
from lmforge.errors import LMForgeError

DESCRIPTION = """Fine-tune a run. Every task takes --config FILE and --set section.key=value
(train.*, finetune.*, lora.*) like pretrain; --lora-r N trains low-rank adapters only (the run
then holds a small adapter.safetensors over its base run). Every task checkpoints while it
runs: --resume RUN continues it exactly (its other flags are read from the run); --nproc N (or
torchrun) trains it as N DDP processes.

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
    classify.add_argument("--train", type=Path, metavar="FILE")
    classify.add_argument("--valid", type=Path, metavar="FILE")
    classify.add_argument("--text-column", help="column with the text (default: sentence)")
    classify.add_argument("--text-pair-column", help="column with the second text of pairs")
    classify.add_argument("--label-column", help="column with the label (default: label)")
    classify.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        help="balanced weighs each class's loss by n / (classes · count): for imbalanced data",
    )
    classify.add_argument(
        "--pretrain-steps",
        type=int,
        metavar="N",
        help="first continue the base's MLM (BERT) or CLM (GPT) for N steps on the --train "
        "texts (domain-adaptive pretraining, in RUN/domain_adapt; default 0: off)",
    )
    classify.add_argument(
        "--from-scratch",
        type=Path,
        metavar="CONFIG",
        help="instead of --base: train a tokenizer and a new base of CONFIG (model.*, train.*, "
        "finetune.*) on the --train texts first, for --pretrain-steps N steps (default: CONFIG's "
        "train.max_steps); configs/classify-small.yaml is the CPU recipe",
    )
    lm = tasks.add_parser("lm", help="continued pretraining on prepared text")
    lm.add_argument("--data", type=Path, help="data directory (lmforge prepare)")
    sft = tasks.add_parser("sft", help="prompt -> completion pairs from JSONL")
    sft.add_argument("--train", type=Path, metavar="FILE", help="JSONL pairs")
    sft.add_argument("--valid", type=Path, metavar="FILE", help="JSONL pairs")
    sft.add_argument("--no-pack", action="store_true", help="one example per row, padded")
    sft.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed JSONL lines (counted)"
    )
    multitask = tasks.add_parser("multitask", help="several classification tasks, one body")
    multitask.add_argument(
        "--task",
        dest="tasks",
        action="append",
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
    p.add_argument("--base", type=Path, metavar="RUN", help="pretrained run (required)")
    p.add_argument("--out", type=Path, help="run directory to create (required)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue this fine-tune from its newest checkpoint, exactly (its own config)",
    )
    p.add_argument(
        "--config", type=Path, help="YAML/JSON/TOML config (train.*, finetune.*, lora.*)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    p.add_argument("--lora-r", type=int, help="LoRA rank (e.g. 8); adapters only train")
    p.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default 16)")
    p.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input")
    p.add_argument("--lora-targets", help="layers to adapt, e.g. q,k,v,o (default) or q,v,fc")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_nproc(p)


# the flags each task needs unless it resumes (then every one is read from the run)
REQUIRED = {
    "classify": ("base", "out", "train", "valid"),
    "multitask": ("base", "out", "tasks"),
    "lm": ("base", "out", "data"),
    "sft": ("base", "out", "train", "valid"),
}


def _check_flags(args: argparse.Namespace) -> None:
    if args.resume is not None:
        names = (*REQUIRED[args.task], "config", "from_scratch")
        given = [f for f in names if getattr(args, f, None) is not None]
        if given:
            flag = "--task" if given[0] == "tasks" else f"--{given[0].replace('_', '-')}"
            raise LMForgeError(
                f"--resume RUN takes the run's own settings; drop {flag} (change train.* with "
                "--set)"
            )
        return
    scratch = getattr(args, "from_scratch", None) is not None
    if scratch and args.base is not None:
        raise LMForgeError("give --base RUN or --from-scratch CONFIG, not both")
    if scratch and args.nproc > 1:
        raise LMForgeError("--from-scratch runs in one process; drop --nproc")
    for name in REQUIRED[args.task]:
        if name == "base" and scratch:
            continue
        if getattr(args, name) is None:
            flag = "--task NAME=FILE" if name == "tasks" else f"--{name}"
            if name == "base" and args.task == "classify":
                flag = "--base RUN (or --from-scratch CONFIG)"
            raise LMForgeError(f"finetune {args.task} needs {flag} (or --resume RUN)")


def _lora_sets(args: argparse.Namespace) -> list[str]:
    flags = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
    flags["targets"] = args.lora_targets
    return [f"lora.{key}={value}" for key, value in flags.items() if value is not None]


def run_finetune(args: argparse.Namespace) -> None:
    _check_flags(args)
    if started_workers(args):
        return
    from lmforge.jobs import finetune

    sets = [*args.set, *_lora_sets(args)]
    if args.resume is not None:
        summary = finetune.resume_finetune(args.resume, sets, args.task)
    elif args.task == "classify" and args.from_scratch is not None:
        summary = finetune.finetune_classify_from_scratch(
            args.from_scratch, _classify_flags(args), sets, args.out, args.overwrite, args.config
        )
    elif args.task == "classify":
        summary = finetune.finetune_classify(
            finetune.resolve("classify", args.base, args.config, sets, _classify_flags(args)),
            args.out,
            args.overwrite,
        )
    elif args.task == "multitask":
        cfg = finetune.resolve("multitask", args.base, args.config, sets, {})
        summary = finetune.finetune_multitask(cfg, _task_files(args), args.out, args.overwrite)
    else:
        summary = _run_lm(args, sets, finetune)
    if not summary["is_main"]:
        return  # another torchrun worker: rank 0 reports
    if args.task == "classify":
        _print_classify(summary)
    elif args.task == "multitask":
        _print_multitask(summary)
    else:
        _print_lm(summary)


def _run_lm(args: argparse.Namespace, sets: list[str], finetune: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if args.freeze_layers is not None:
        inputs["freeze_layers"] = args.freeze_layers
    if args.freeze_embeddings:
        inputs["freeze_embeddings"] = True
    if args.task == "lm":
        cfg = finetune.resolve(
            "lm", args.base, args.config, [*sets, f"data.dir={args.data}"], inputs
        )
        return finetune.finetune_lm(cfg, args.out, args.overwrite)
    inputs.update(train_file=str(args.train), valid_file=str(args.valid))
    inputs.update(pack=not args.no_pack, skip_bad_lines=args.skip_bad_lines)
    cfg = finetune.resolve("sft", args.base, args.config, sets, inputs)
    return finetune.finetune_sft(cfg, args.out, args.overwrite)


def _print_lm(summary: dict[str, Any]) -> None:
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


def _task_files(args: argparse.Namespace) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for item in args.tasks:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise LMForgeError(f"--task {item!r}: write NAME=FILE, e.g. --task sst=sst.yaml")
        if name in files:
            raise LMForgeError(f"--task {name} is given twice")
        files[name] = Path(file)
    return files


def _print_multitask(summary: dict[str, Any]) -> None:
    best, names = summary["best"], summary["tasks"]
    print(f"fine-tuned {summary['steps']} steps on {len(names)} tasks -> {summary['run_dir']}")
    drawn = summary["batches_per_task"]
    for name in names:
        print(
            f"  {name}: accuracy {best[f'val_{name}_accuracy']:.4f}, "
            f"macro-F1 {best[f'val_{name}_macro_f1']:.4f}, "
            f"{drawn[name]} of {sum(drawn.values())} training batches"
        )
    print(f"  mean accuracy {best['val_accuracy']:.4f} (best at step {best['step']})")


def _classify_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "train_file": str(args.train),
        "valid_file": str(args.valid),
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
        "class_weights": args.class_weights,
        "pretrain_steps": args.pretrain_steps,
    }
    return {key: value for key, value in flags.items() if value is not None}


def _print_classify(summary: dict[str, Any]) -> None:
    """The best epoch's report and confusion matrix."""
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
