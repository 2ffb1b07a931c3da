"""`lmforge compress prune | quantize | distill | report`: their flags, and what they print."""

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge.cli.workers import add_nproc, started_workers
from lmforge.errors import LMForgeError

COMPRESS_EXAMPLES = """examples:
  lmforge compress prune    runs/nano --sparsity 0.5 --out runs/nano-p50 --finetune-steps 500
  lmforge compress prune    runs/nano --sparsity 0.25 --structured heads --out runs/nano-h25
  lmforge compress quantize runs/nano --int8 --out runs/nano-q8
  lmforge compress distill  --teacher runs/big --student-config configs/gpt-nano-cpu.yaml \\
                            --data data/docs --out runs/small
  lmforge compress distill  --resume runs/small      # after an interruption
  lmforge compress report   runs/nano runs/nano-p50 runs/nano-q8 --text held-out.txt
"""


def add_compress(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "compress",
        help="prune, quantize or distill a run, and compare the results",
        description="Make a run smaller or faster and see what it costs.",
        epilog=COMPRESS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    how = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    prune = how.add_parser(
        "prune",
        help="magnitude pruning, or whole heads / MLP neurons",
        description="Unstructured: zero the smallest weights of the blocks, globally ranked. "
        "--structured heads|neurons removes whole attention heads or MLP neurons (the same "
        "number in every block, the least important first) so the model really shrinks.",
    )
    prune.add_argument("run", type=Path, nargs="?", help="run directory of a GPT")
    prune.add_argument("--sparsity", type=float, help="fraction to remove, e.g. 0.5 (required)")
    prune.add_argument("--structured", choices=("heads", "neurons"), help="remove heads or neurons")
    prune.add_argument("--finetune-steps", type=int, default=0, help="recovery steps (default 0)")
    prune.add_argument("--data", type=Path, help="prepared data to recover on (default: the run's)")
    prune.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate")
    prune.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recovery setting (train.* or dist.*), e.g. --set train.batch_size=8",
    )
    _add_out(prune, resumable=True)
    quantize = how.add_parser(
        "quantize",
        help="int8 weights for every linear layer (CPU)",
        description="Dynamic int8 quantization (PyTorch) of every nn.Linear: int8 weights with "
        "one scale per output channel; activations are quantized on the fly.",
    )
    quantize.add_argument("run", type=Path, help="run directory")
    quantize.add_argument(
        "--int8",
        action="store_true",
        default=True,
        help="8-bit integers (the default and only width)",
    )
    _add_out(quantize)
    distill = how.add_parser(
        "distill",
        help="train a smaller student on a teacher's soft targets",
        description="Pretrain a student from --student-config on --data with the loss "
        "alpha·T²·KL(teacher‖student at temperature T) + (1-alpha)·cross-entropy. Teacher and "
        "student share the teacher's tokenizer: prepare --data with it.",
    )
    distill.add_argument("--teacher", type=Path, help="teacher run directory (required)")
    distill.add_argument("--student-config", type=Path, help="student YAML (required)")
    distill.add_argument("--data", type=Path, help="prepared data directory (required)")
    distill.add_argument("--temperature", type=float, default=2.0, help="softmax T (default 2)")
    distill.add_argument("--alpha", type=float, default=0.5, help="soft-target weight (0.5)")
    distill.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_out(distill, resumable=True)
    report = how.add_parser(
        "report",
        help="table and PNG: size, parameters, perplexity, bits/byte, speed",
        description="Compare runs on one held-out text: weights on disk, non-zero parameters, "
        "perplexity, bits per byte and greedy decoding tokens/s.",
    )
    report.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories")
    report.add_argument("--text", type=Path, required=True, help="held-out UTF-8 text")
    report.add_argument("--stride", type=int, help="sliding-window stride (default: the context)")
    report.add_argument("--plot", type=Path, default=Path("compress_report.png"), metavar="PNG")
    report.add_argument("--json", action="store_true", help="print the rows as one JSON list")


def _add_out(p: argparse.ArgumentParser, resumable: bool = False) -> None:
    p.add_argument("--out", type=Path, required=not resumable, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    if resumable:  # these train through the session: checkpointed, resumable, distributable
        p.add_argument(
            "--resume",
            type=Path,
            metavar="RUN",
            help="continue the training of this run from its newest checkpoint, exactly",
        )
        add_nproc(p)


def _check_flags(args: argparse.Namespace, required: tuple[str, ...]) -> None:
    """Flags needed unless --resume RUN (which reads them from the run)."""
    if args.resume is not None:
        given = [name for name in required if getattr(args, name) is not None]
        if given:
            flag = given[0].replace("_", "-")
            raise LMForgeError(f"--resume RUN takes the run's own settings; drop --{flag}")
        return
    for name in required:
        if getattr(args, name) is None:
            flag = "RUN" if name == "run" else "--" + name.replace("_", "-")
            raise LMForgeError(f"compress {args.method} needs {flag} (or --resume RUN)")


_REQUIRED = {
    "prune": ("run", "sparsity", "out"),
    "distill": ("teacher", "student_config", "data", "out"),
}


def run_compress(args: argparse.Namespace) -> None:
    from lmforge.jobs import compress

    if args.method in ("prune", "distill"):
        _check_flags(args, _REQUIRED[args.method])
        if started_workers(args):
            return
    if args.method == "prune":
        _print_prune(compress.resume_prune(args.resume) if args.resume else _prune(args, compress))
    elif args.method == "quantize":
        _print_quantize(args, compress.quantize_run(args.run, args.out, args.overwrite))
    elif args.method == "distill":
        _print_distill(args.resume or args.out, _distill(args, compress))
    else:
        rows = compress.compress_report(args.runs, args.text, args.plot, args.stride)
        print(json.dumps(rows) if args.json else format_report(rows) + f"\nplot: {args.plot}")


def _prune(args: argparse.Namespace, compress: Any) -> dict[str, Any]:
    settings = (args.sparsity, args.structured, args.finetune_steps, args.data, args.lr)
    return compress.prune_run(args.run, args.out, *settings, args.overwrite, args.set)


def _distill(args: argparse.Namespace, compress: Any) -> dict[str, Any]:
    if args.resume is not None:
        return compress.resume_distill(args.resume, args.set)
    files = (args.teacher, args.student_config, args.data, args.out)
    return compress.distill_run(*files, args.set, args.temperature, args.alpha, args.overwrite)


def _print_prune(summary: dict[str, Any]) -> None:
    if not summary.get("is_main", True):
        return  # another torchrun worker: rank 0 reports
    zeros = summary["zero_fraction_by_layer"]["total"]
    print(
        f"pruned {summary['source_run']} -> {summary['out']}: {summary['method']}, parameters "
        f"{summary['params_before']:,} -> {summary['params_after']:,}, "
        f"{zeros:.1%} of block weights zero"
    )


def _print_quantize(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    print(
        f"quantized {args.run} -> {args.out}: {summary['scheme']}, {summary['layers']} "
        f"layers, model file {summary['model_bytes_before'] / 1e6:.2f} MB -> "
        f"{summary['model_bytes_after'] / 1e6:.2f} MB ({summary['shrink']:.2f}x smaller), "
        f"run directory {summary['run_bytes_before'] / 1e6:.2f} MB -> "
        f"{summary['run_bytes_after'] / 1e6:.2f} MB"
    )


def _print_distill(out: Path, summary: dict[str, Any]) -> None:
    if summary["is_main"]:
        print(f"distilled {summary['teacher']} -> {out}: val loss {summary['last_val_loss']:.4f}")


def format_report(rows: list[dict[str, Any]]) -> str:
    """The report as an aligned text table."""
    header = ("run", "size MB", "params", "ppl", "bits/byte", "decode tok/s")
    lines = [header]
    for row in rows:
        lines.append(
            (
                str(row["run"]),
                f"{row['size_mb']:.2f}",
                f"{row['parameters']:,}",
                f"{row['perplexity']:.2f}",
                f"{row['bits_per_byte']:.4f}",
                f"{row['decode_tokens_per_s']:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
