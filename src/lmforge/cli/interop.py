"""`lmforge import hf` and `lmforge export hf`: their flags, and what they print."""

import argparse
from pathlib import Path


def add_interop(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "import",
        help="turn a Hugging Face model into a run directory",
        description="Import a transformers GPT-2, GPT-NeoX or BERT model as an lmforge run "
        "directory (config.json, model.safetensors, tokenizer.json) for generate and evaluate.",
    )
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face transformers model")
    p.add_argument(
        "source",
        metavar="SRC",
        help="a save_pretrained directory, or a Hub repository id such as gpt2 (downloads)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p = verbs.add_parser(
        "export",
        help="write a run as a Hugging Face model",
        description="Export a run directory as a transformers model directory "
        "(GPT-2, GPT-NeoX for rotary runs, or BERT) that from_pretrained loads offline.",
    )
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face transformers model")
    p.add_argument("run", type=Path, metavar="RUN", help="run directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run_interop(args: argparse.Namespace) -> None:
    from lmforge.jobs import interop

    if args.verb == "import":
        summary = interop.import_hf(args.source, args.out, args.overwrite)
        what = f"imported {args.source}"
    else:
        summary = interop.export_hf(args.run, args.out, args.overwrite)
        what = f"exported {args.run}"
    extra = "".join(f", {k} {v}" for k, v in summary.items() if k not in ("out", "params"))
    print(f"{what} -> {summary['out']}: {summary['params']:,} parameters{extra}")
