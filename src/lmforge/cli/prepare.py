"""`lmforge prepare`: its flags, and what it prints."""

import argparse
from pathlib import Path


def add_prepare(verbs: argparse._SubParsersAction) -> None:
    """`lmforge prepare`."""
    p = verbs.add_parser(
        "prepare",
        help="clean a corpus, train a tokenizer, write token shards",
        description="Read text, clean and dedup it, train a tokenizer and write "
        "train/val token shards (*.bin + meta.json) into --out. Inputs are streamed in bounded "
        "memory: text files (.txt .md .rst, any unknown suffix), .jsonl, .csv, .tsv (each also "
        ".gz .zst .bz2 .xz), .parquet, .arrow, a datasets save_to_disk directory, "
        "hf:NAME[:CONFIG][:SPLIT] (datasets.load_dataset) and builtin:python-docs; .zst, "
        "Parquet, Arrow and datasets need pip install 'lmforge[data]'.",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, directories (searched recursively), globs, a saved dataset directory, "
        "hf:NAME[:CONFIG][:SPLIT] or builtin:python-docs",
    )
    p.add_argument(
        "--documents",
        choices=["chunk", "paragraph", "line"],
        default="chunk",
        help="what one document of a text file is: pieces of up to 64K characters cut at "
        "paragraph, line or sentence breaks (chunk, the default), each blank-line-separated "
        "paragraph, or each non-blank line; a JSONL record or table row is always one",
    )
    p.add_argument(
        "--text-column",
        default="text",
        metavar="NAME",
        help="the JSONL field (a.b for a nested one) or the column of a .csv/.tsv/.parquet/"
        ".arrow file or dataset that holds the text (default: text)",
    )
    p.add_argument(
        "--normalize",
        choices=["none", "nfc", "nfkc"],
        default="none",
        help="Unicode normalisation stored in the trained tokenizer, so generation and "
        "evaluation apply it too: nfkc folds full-width ＡＢＣ１２３ to ABC123 (default: none)",
    )
    p.add_argument(
        "--near-dedup",
        type=float,
        default=0.0,
        metavar="THRESHOLD",
        help="drop documents whose MinHash-estimated Jaccard similarity with an earlier one is "
        ">= THRESHOLD (e.g. 0.8; word 5-grams, or character 3-grams for Chinese/Japanese/"
        "Korean); examples go to near_duplicates.jsonl (default 0: off)",
    )
    p.add_argument(
        "--segmenter",
        choices=["none", "jieba"],
        default="none",
        help="wordpiece: also store each token's word start from a word segmenter, so "
        "data.whole_word_masking masks whole Chinese words (jieba: pip install 'lmforge[zh]'; "
        "default: none, whole words are WordPiece's ## pieces)",
    )
    p.add_argument(
        "--fix-text",
        action="store_true",
        help="repair mojibake (text decoded with the wrong codec: cafÃ© -> café) with ftfy "
        "before cleaning; needs pip install 'lmforge[data]'",
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
        "--tokenizer-sample-mb",
        type=float,
        default=16.0,
        metavar="MB",
        help="bpe/wordpiece: train the tokenizer on a uniform random sample of the documents "
        "this big (default 16; 0: all the text); the shards always hold every document",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that encode the shards (default 0: one per core)",
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
            documents=args.documents,
            text_column=args.text_column,
            normalize=args.normalize,
            near_dedup=args.near_dedup,
            fix_text=args.fix_text,
            segmenter=args.segmenter,
            tokenizer_sample_mb=args.tokenizer_sample_mb,
            workers=args.workers,
        )
    )
    splits = meta["splits"]
    print(
        f"wrote {args.out}: {meta['tokenizer_kind']} tokenizer, {meta['vocab_size']} tokens; "
        f"train {splits['train']['tokens']:,} tokens ({splits['train']['documents']} docs), "
        f"val {splits['val']['tokens']:,} tokens ({splits['val']['documents']} docs)"
    )
