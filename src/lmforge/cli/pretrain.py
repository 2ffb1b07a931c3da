"""`lmforge pretrain`: its flags, and what it prints."""

import argparse
import math
from pathlib import Path

from lmforge.cli.workers import add_nproc, started_workers
from lmforge.config import load_config
from lmforge.errors import LMForgeError


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
    add_nproc(p)


def run_pretrain(args: argparse.Namespace) -> None:
    """Pretrain (or resume) and report the validation metrics before and after."""
    if started_workers(args):
        return
    from lmforge.jobs.pretrain import pretrain, resume

    if args.resume:
        if args.config or args.data or args.out:
            raise LMForgeError(
                "--resume RUN takes the run's own config; drop --config/--data/--out"
            )
        summary = resume(args.resume, args.set)
    else:
        if not args.out:
            raise LMForgeError("pretrain needs --out RUN_DIR (or --resume RUN)")
        sets = [*args.set, f"data.dir={args.data}"] if args.data else args.set
        summary = pretrain(load_config(args.config, sets), args.out, args.overwrite)
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
