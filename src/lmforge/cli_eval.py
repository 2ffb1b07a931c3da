"""The `evaluate` and `compress` verbs of the command line."""

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge import eval_jobs, finetune_lm, jobs
from lmforge.cli_finetune import print_sft_scores
from lmforge.compress import runs

COMPRESS_EXAMPLES = """examples:
  lmforge compress prune    runs/nano --sparsity 0.5 --out runs/nano-p50 --finetune-steps 500
  lmforge compress prune    runs/nano --sparsity 0.25 --structured heads --out runs/nano-h25
  lmforge compress quantize runs/nano --int8 --out runs/nano-q8
  lmforge compress distill  --teacher runs/big --student-config configs/gpt-nano-cpu.yaml \\
                            --data data/docs --out runs/small
  lmforge compress report   runs/nano runs/nano-p50 runs/nano-q8 --text held-out.txt
"""


def add_evaluate(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "evaluate",
        help="perplexity on prepared data or a text file; classifier metrics on a labelled file",
        description="Score a run. By default: loss and perplexity over a whole split of prepared "
        "data. --text FILE: loss, perplexity, bits per byte (comparable across tokenizers) and "
        "tokens/s on any UTF-8 text, in sliding windows. --classify FILE: accuracy, macro "
        "precision/recall/F1 and the confusion matrix of a fine-tuned classifier.",
    )
    p.add_argument("run", type=Path, help="run directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="data directory (default: the run's own)")
    source.add_argument("--text", type=Path, metavar="FILE", help="score this UTF-8 text file")
    source.add_argument(
        "--classify", type=Path, metavar="FILE", help="labelled CSV/TSV/JSONL for a classifier"
    )
    source.add_argument(
        "--sft",
        type=Path,
        metavar="FILE",
        help="JSONL prompt/completion pairs: greedy generation scored by exact match, BLEU, chrF",
    )
    p.add_argument("--split", default="val", choices=["train", "val"], help="with --data")
    p.add_argument(
        "--stride",
        type=int,
        help="with --text: tokens between window starts (default: the context, i.e. no overlap); "
        "smaller gives every token more context and costs more",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="with --text: loss by context position; with --classify: confusion matrix",
    )
    p.add_argument("--batch-size", type=int, default=32, help="with --classify (default 32)")
    p.add_argument("--task", metavar="NAME", help="with --classify: a multitask run's head")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run_evaluate(args: argparse.Namespace) -> None:
    if args.text is not None:
        score, plot = eval_jobs.evaluate_text(args.run, args.text, args.stride, args.plot)
        _print_record(args, score.as_dict(), _text_line(score.as_dict(), plot))
    elif args.sft is not None:
        print_sft_scores(finetune_lm.evaluate_sft(args.run, args.sft), args.json)
    elif args.classify is not None:
        result = eval_jobs.evaluate_classifier(
            args.run, args.classify, args.batch_size, args.plot, args.task
        )
        metrics = result["metrics"]
        keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "confusion_matrix")
        record = {key: metrics[key] for key in keys} | {"labels": result["labels"]}
        if not args.json:
            print(result["report"])
            print(result["confusion_table"])
        _print_record(args, record, f"accuracy {metrics['accuracy']:.4f}")
    else:
        result = jobs.evaluate(args.run, args.data, args.split)
        record = {"loss": result.loss, "perplexity": result.perplexity, "tokens": result.tokens}
        line = (
            f"{args.split}: loss {result.loss:.4f}, perplexity {result.perplexity:.2f} "
            f"over {result.tokens:,} tokens"
        )
        _print_record(args, record, line)


def _text_line(record: dict[str, Any], plot: Path | None) -> str:
    line = (
        f"loss {record['loss']:.4f}, perplexity {record['perplexity']:.2f}, "
        f"{record['bits_per_byte']:.4f} bits/byte over {record['tokens']:,} tokens "
        f"({record['bytes']:,} bytes), {record['tokens_per_s']:,.0f} tokens/s"
    )
    return line + (f"\nposition plot: {plot}" if plot else "")


def _print_record(args: argparse.Namespace, record: dict[str, Any], line: str) -> None:
    print(json.dumps(record) if args.json else line)


# ---------------------------------------------------------------- compress


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
    prune.add_argument("run", type=Path, help="run directory of a GPT")
    prune.add_argument("--sparsity", type=float, required=True, help="fraction to remove, e.g. 0.5")
    prune.add_argument("--structured", choices=runs.STRUCTURES, help="remove heads or neurons")
    prune.add_argument("--finetune-steps", type=int, default=0, help="recovery steps (default 0)")
    prune.add_argument("--data", type=Path, help="prepared data to recover on (default: the run's)")
    prune.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate")
    _add_out(prune)
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
    distill.add_argument("--teacher", type=Path, required=True, help="teacher run directory")
    distill.add_argument("--student-config", type=Path, required=True, help="student YAML")
    distill.add_argument("--data", type=Path, required=True, help="prepared data directory")
    distill.add_argument("--temperature", type=float, default=2.0, help="softmax T (default 2)")
    distill.add_argument("--alpha", type=float, default=0.5, help="soft-target weight (0.5)")
    distill.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_out(distill)
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


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run_compress(args: argparse.Namespace) -> None:
    if args.method == "prune":
        summary = runs.prune_run(
            args.run,
            args.out,
            args.sparsity,
            args.structured,
            args.finetune_steps,
            args.data,
            args.lr,
            args.overwrite,
        )
        zeros = summary["zero_fraction_by_layer"]["total"]
        print(
            f"pruned {args.run} -> {args.out}: {summary['method']}, parameters "
            f"{summary['params_before']:,} -> {summary['params_after']:,}, "
            f"{zeros:.1%} of block weights zero"
        )
    elif args.method == "quantize":
        summary = runs.quantize_run(args.run, args.out, args.overwrite)
        print(
            f"quantized {args.run} -> {args.out}: {summary['scheme']}, {summary['layers']} "
            f"layers, model file {summary['model_bytes_before'] / 1e6:.2f} MB -> "
            f"{summary['model_bytes_after'] / 1e6:.2f} MB ({summary['shrink']:.2f}x smaller), "
            f"run directory {summary['run_bytes_before'] / 1e6:.2f} MB -> "
            f"{summary['run_bytes_after'] / 1e6:.2f} MB"
        )
    elif args.method == "distill":
        summary = runs.distill_run(
            args.teacher,
            args.student_config,
            args.data,
            args.out,
            args.set,
            args.temperature,
            args.alpha,
            args.overwrite,
        )
        print(f"distilled {args.teacher} -> {args.out}: val loss {summary['last_val_loss']:.4f}")
    else:
        rows = runs.compress_report(args.runs, args.text, args.plot, args.stride)
        print(json.dumps(rows) if args.json else format_report(rows) + f"\nplot: {args.plot}")


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
