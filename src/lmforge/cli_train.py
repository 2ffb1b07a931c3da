"""The training verbs of the command line: prepare, pretrain, finetune classify and predict."""

import argparse
import math
import subprocess
import sys
from pathlib import Path

from lmforge import jobs
from lmforge.config import load_config
from lmforge.errors import LMForgeError


def add_prepare(verbs: argparse._SubParsersAction) -> None:
    """`lmforge prepare`."""
    p = verbs.add_parser(
        "prepare",
        help="clean a corpus, train a tokenizer, write token shards",
        description="Read text, clean and dedup it, train a tokenizer and write "
        "train/val token shards (*.bin + meta.json) into --out.",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, directories, globs, .jsonl (text field) or builtin:python-docs",
    )
    p.add_argument("--out", required=True, type=Path, help="data directory to write")
    p.add_argument(
        "--tokenizer",
        choices=["bpe", "wordpiece", "char"],
        default="bpe",
        help="byte-level BPE (default; for GPTs), BERT WordPiece (for BERTs: records sentence "
        "boundaries for next-sentence prediction) or one token per character",
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE or WordPiece vocabulary size")
    p.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wordpiece: lowercase and strip accents, as uncased BERT (default: on)",
    )
    p.add_argument(
        "--tokenizer-file",
        type=Path,
        help="reuse an existing tokenizer.json instead of training one",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of documents held out for validation"
    )
    p.add_argument("--min-chars", type=int, default=16, help="drop shorter documents")
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace", "ignore"],
        default="strict",
        help="what to do with invalid UTF-8 (default: stop and say where)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def add_pretrain(verbs: argparse._SubParsersAction, config_keys: str) -> None:
    """`lmforge pretrain`; config_keys is the epilog listing every config key."""
    p = verbs.add_parser(
        "pretrain",
        help="train a GPT or a BERT from scratch (or resume a run)",
        description="Pretrain a causal language model (train.objective=clm) or a BERT encoder "
        "(model.arch=bert, train.objective=mlm+nsp or mlm) on prepared shards.",
        epilog=config_keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML/JSON/TOML config (non-defaults only)")
    p.add_argument("--data", type=Path, help="data directory from `lmforge prepare`")
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue this run exactly")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_steps=2000 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="start this many DDP worker processes here (torchrun; gloo on CPU) instead of one",
    )


def add_predict(verbs: argparse._SubParsersAction) -> None:
    """`lmforge predict`."""
    p = verbs.add_parser(
        "predict",
        help="classify a file with a fine-tuned run",
        description="Classify every row of a .csv/.tsv/.jsonl file; write one JSON object per "
        'row: {"text": ..., "label": ..., "probabilities": {label: p, ...}}.',
    )
    p.add_argument("run", type=Path, help="run directory made by `finetune classify|multitask`")
    p.add_argument("--input", type=Path, required=True, metavar="FILE", help="rows to classify")
    p.add_argument("--task", metavar="NAME", help="the head of a `finetune multitask` run")
    p.add_argument("--output", type=Path, required=True, metavar="FILE", help="JSONL to write")
    p.add_argument("--text-column", help="column with the text (default: the fine-tune's)")
    p.add_argument("--text-pair-column", help="second text column (default: the fine-tune's)")
    p.add_argument("--label-column", help="gold labels: also report accuracy and macro-F1")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run_predict(args: argparse.Namespace) -> None:
    """Classify a file; print where the predictions went (and accuracy with gold labels)."""
    summary = jobs.predict(
        jobs.PredictOptions(
            run=args.run,
            input=args.input,
            output=args.output,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            task=args.task,
        )
    )
    line = f"wrote {summary['n']} predictions to {summary['output']}"
    if "accuracy" in summary:
        line += f"; accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f}"
    print(line)


def run_prepare(args: argparse.Namespace) -> None:
    """Prepare shards and say what was written."""
    meta = jobs.prepare(
        jobs.PrepareOptions(
            inputs=args.input,
            out=args.out,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            val_fraction=args.val_fraction,
            min_chars=args.min_chars,
            encoding_errors=args.encoding_errors,
            tokenizer_file=args.tokenizer_file,
            overwrite=args.overwrite,
            lowercase=args.lowercase,
        )
    )
    splits = meta["splits"]
    print(
        f"wrote {args.out}: {meta['tokenizer_kind']} tokenizer, {meta['vocab_size']} tokens; "
        f"train {splits['train']['tokens']:,} tokens ({splits['train']['documents']} docs), "
        f"val {splits['val']['tokens']:,} tokens ({splits['val']['documents']} docs)"
    )


def worker_command(args: argparse.Namespace) -> list[str]:
    """The torchrun command that runs this pretrain as args.nproc DDP workers."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(args.nproc), "-m", "lmforge", "pretrain"]
    for flag in ("config", "data", "out", "resume"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    for item in args.set:
        command += ["--set", item]
    if not any(item.strip().startswith("dist.strategy=") for item in args.set):
        command += ["--set", "dist.strategy=ddp"]
    return command + (["--overwrite"] if args.overwrite else [])


def run_pretrain(args: argparse.Namespace) -> None:
    """Pretrain (or resume) and report the validation metrics before and after."""
    if args.nproc < 1:
        raise LMForgeError("--nproc must be >= 1")
    if args.nproc > 1:
        done = subprocess.run(worker_command(args), check=False)
        if done.returncode:
            raise LMForgeError(f"a worker process failed (exit {done.returncode}); see above")
        return
    if args.resume:
        if args.config or args.data or args.out:
            raise LMForgeError(
                "--resume RUN takes the run's own config; drop --config/--data/--out"
            )
        summary = jobs.resume(args.resume, args.set)
    else:
        if not args.out:
            raise LMForgeError("pretrain needs --out RUN_DIR (or --resume RUN)")
        sets = [*args.set, f"data.dir={args.data}"] if args.data else args.set
        summary = jobs.pretrain(load_config(args.config, sets), args.out, args.overwrite)
    if not summary.get("is_main", True):
        return  # another torchrun worker: rank 0 reports
    first, last = summary["first_val_loss"], summary["last_val_loss"]
    print(f"trained {summary['steps']} steps -> {summary['run_dir']}")
    if summary["stopped_early"]:
        print(
            f"stopped early: {summary['best_metric']} best {summary['best_score']:.4f} at step "
            f"{summary['best_step']}"
        )
    if summary["objective"] != "clm":
        scores = {k: v for k, v in summary["last_metrics"].items() if k != "step"}
        print("val " + ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in scores.items()))
    elif math.isfinite(first) and math.isfinite(last):
        print(
            f"val loss {first:.4f} -> {last:.4f}; perplexity {math.exp(first):.2f} -> "
            f"{math.exp(last):.2f} ({math.exp(first - last):.1f}x lower)"
        )
    if summary["skipped_steps"]:
        print(f"warning: {summary['skipped_steps']} steps were skipped as non-finite")
    print(f"loss plot: {summary['loss_plot']}")
