"""`lmforge prepare`: its flags, and what it prints."""

import argparse
from pathlib import Path


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


def run_prepare(args: argparse.Namespace) -> None:
    """Prepare shards and say what was written."""
    from lmforge.jobs.prepare import PrepareOptions, prepare

    meta = prepare(
        PrepareOptions(
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
