"""`lmforge estimate`: its flags, and the table it prints."""

import argparse
import json
from pathlib import Path

from lmforge.config import load_config


def add_estimate(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "estimate",
        help="parameters, FLOPs per token and memory per device of a config",
        description="What a config costs before it runs: parameters, training FLOPs per token "
        "(6N + attention), and memory per device for weights, gradients, AdamW states and "
        "activations under dist.strategy none, ddp or fsdp over --world-size devices.",
    )
    p.add_argument("--config", type=Path, help="YAML/JSON/TOML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--world-size", type=int, default=1, help="devices (processes) training")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_estimate(args: argparse.Namespace) -> None:
    from lmforge.jobs.estimate import estimate, format_estimate

    result = estimate(load_config(args.config, args.set), args.world_size)
    print(json.dumps(result) if args.json else format_estimate(result))
