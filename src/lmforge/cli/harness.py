"""`lmforge harness`: lm-evaluation-harness tasks on a run (pip install 'lmforge[eval]')."""

import argparse
import json
from pathlib import Path


def add_harness(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "harness",
        help="score a run on lm-evaluation-harness tasks (pip install 'lmforge[eval]')",
        description="Run EleutherAI lm-evaluation-harness tasks on a run: the run is registered "
        "as lm-eval's model `lmforge` and lm-eval does the rest; prints lm-eval's results table "
        "(or, with --json, one JSON line holding its results object).",
    )
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", type=Path, help="a directory of your own task YAMLs")
    p.add_argument("--limit", type=float, help="examples per task (or a fraction below 1)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    p.add_argument("--output", type=Path, help="write results.json into this directory")
    p.add_argument("--json", action="store_true", help="print one JSON line: the results")


def run_harness(args: argparse.Namespace) -> None:
    from lmforge.jobs.harness import run_harness as harness

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    record, table = harness(
        args.run, tasks, args.include_path, args.limit, args.num_fewshot, args.output
    )
    print(json.dumps(record) if args.json else table)
