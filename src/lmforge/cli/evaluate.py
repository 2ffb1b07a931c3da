"""The `evaluate` and `compress` verbs of the command line."""

import argparse
import json
from pathlib import Path
from typing import Any


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
    p.add_argument(
        "--bleu-tokenize",
        default="auto",
        choices=["auto", "13a", "zh", "char", "intl", "none"],
        help="with --sft: sacrebleu's tokenizer for BLEU (default auto: zh when the references "
        "are mostly Chinese, char when mostly Japanese or Korean, else 13a)",
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
    from lmforge.jobs import evaluate

    if args.text is not None:
        score, plot = evaluate.evaluate_text(args.run, args.text, args.stride, args.plot)
        _print_record(args, score.as_dict(), _text_line(score.as_dict(), plot))
    elif args.sft is not None:
        scores = evaluate.evaluate_sft(args.run, args.sft, bleu_tokenize=args.bleu_tokenize)
        print_sft_scores(scores, args.json)
    elif args.classify is not None:
        result = evaluate.evaluate_classifier(
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
        result = evaluate.evaluate(args.run, args.data, args.split)
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


def print_sft_scores(scores: dict[str, Any], as_json: bool) -> None:
    record = {k: v for k, v in scores.items() if k != "samples"}
    if as_json:
        print(json.dumps(record))
        return
    for sample in scores["samples"]:
        print(f"prompt: {sample['prompt']!r}\noutput: {sample['output']!r}\n")
    print(
        f"{scores['examples']} pairs: exact match {scores['exact_match']:.3f}, "
        f"BLEU {scores['bleu']:.2f} (tokenize {scores['bleu_tokenize']}), "
        f"chrF {scores['chrf']:.2f}"
    )
