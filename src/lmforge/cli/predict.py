"""`lmforge predict`: its flags, and what it prints."""

import argparse
from pathlib import Path


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
    from lmforge.jobs.predict import PredictOptions, predict

    summary = predict(
        PredictOptions(
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
