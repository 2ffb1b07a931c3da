"""`lmforge lora merge`: its flags, and what it prints."""

import argparse
from pathlib import Path


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
    from lmforge.jobs.lora import merge_run

    summary = merge_run(args.run, args.out, args.overwrite)
    print(f"merged {args.run} -> {summary['out']}: {summary['params']:,} parameters")
