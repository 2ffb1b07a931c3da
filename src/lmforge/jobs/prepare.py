"""`lmforge prepare`: corpus -> cleaned documents -> tokenizer -> train/val token shards."""

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.corpus import stream_corpus, training_sample
from lmforge.data.sentence_split import load_jieba
from lmforge.data.shards import replace_directory, write_shards
from lmforge.errors import DataError
from lmforge.rundir import layout
from lmforge.rundir.files import check_output_dir
from lmforge.rundir.lock import run_lock
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareOptions:
    inputs: list[str]
    out: Path
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    min_chars: int = 16
    encoding_errors: str = "strict"
    tokenizer_file: Path | None = None
    overwrite: bool = False
    lowercase: bool = True  # wordpiece only: lowercase and strip accents, as uncased BERT
    documents: str = "chunk"  # what one document of a text file is: chunk, paragraph or line
    text_column: str = "text"  # JSONL field (a.b: nested) or table / dataset column with the text
    normalize: str = "none"  # Unicode normalisation stored in the tokenizer: none, nfc, nfkc
    near_dedup: float = 0.0  # drop near-duplicates at this MinHash similarity (0: off)
    fix_text: bool = False  # repair mojibake with ftfy before cleaning
    segmenter: str = "none"  # wordpiece: store jieba word starts for whole-word masking
    tokenizer_sample_mb: float = 16.0  # bpe/wordpiece train on a random sample this big (0: all)
    workers: int = 0  # encoding processes (0: one per core)


def _tokenizer(opts: PrepareOptions, texts: Iterator[str]) -> Tokenizer:
    """The tokenizer file given, or one trained on the texts (bpe and wordpiece: on a sample of
    --tokenizer-sample-mb); the texts are read to the end either way, for the corpus report."""
    budget = int(opts.tokenizer_sample_mb * 1_000_000)  # characters, close to bytes for most text
    if opts.tokenizer_file and opts.normalize != "none":
        raise DataError(
            "--normalize is stored in a newly trained tokenizer; with --tokenizer-file the "
            "file's own normaliser applies: drop --normalize"
        )
    if opts.tokenizer_file:
        tokenizer = Tokenizer.load(opts.tokenizer_file)
        sum(1 for _ in texts)  # one pass for the report
        return tokenizer
    if opts.tokenizer == "char":  # every character seen, however rare
        return Tokenizer.train_char(texts, normalize=opts.normalize)
    if opts.tokenizer == "bpe":
        sample = training_sample(texts, budget)
        return Tokenizer.train_bpe(sample, opts.vocab_size, normalize=opts.normalize)
    if opts.tokenizer == "wordpiece":
        sample = training_sample(texts, budget)
        return Tokenizer.train_wordpiece(
            sample, opts.vocab_size, lowercase=opts.lowercase, normalize=opts.normalize
        )
    raise DataError(f"unknown --tokenizer {opts.tokenizer!r}; use bpe, wordpiece or char")


def prepare(opts: PrepareOptions) -> dict[str, Any]:
    """Corpus -> cleaned documents -> tokenizer -> train/val token shards in opts.out (locked
    while it is written)."""
    with run_lock(opts.out, "lmforge prepare"):
        return _prepare(opts)


def _prepare(opts: PrepareOptions) -> dict[str, Any]:
    if not 0 <= opts.val_fraction < 1:
        raise DataError("--val-fraction must be in [0, 1)")
    if opts.tokenizer_sample_mb < 0 or opts.workers < 0:
        raise DataError("--tokenizer-sample-mb and --workers must be >= 0 (0: all text, all cores)")
    if opts.segmenter != "none":
        if opts.tokenizer != "wordpiece" and not opts.tokenizer_file:
            raise DataError(
                "--segmenter marks words for BERT's whole-word masking: use --tokenizer wordpiece"
            )
        if opts.segmenter == "jieba":
            load_jieba()  # fail before reading the corpus when jieba is missing
    check_output_dir(opts.out, opts.overwrite)
    corpus = lambda: stream_corpus(  # noqa: E731
        opts.inputs,
        opts.min_chars,
        opts.encoding_errors,
        documents=opts.documents,
        text_column=opts.text_column,
        near_dedup=opts.near_dedup,
        fix_text=opts.fix_text,
    )
    documents, report = corpus()
    tokenizer = _tokenizer(opts, (d.text for d in documents))
    if report.documents_out == 0:
        raise DataError(
            f"empty corpus after cleaning: {report.documents_in} documents read, "
            f"{report.too_short} shorter than --min-chars {opts.min_chars}, "
            f"{report.duplicates} duplicates; give more text or lower --min-chars"
        )
    log.info("corpus: %s", report.summary())
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=opts.out.parent, prefix=f".{opts.out.name}."))
    try:
        tokenizer.save(tmp / layout.TOKENIZER_FILE)
        documents, _ = corpus()
        meta = write_shards(
            documents,
            tokenizer,
            tmp,
            opts.val_fraction,
            segmenter=opts.segmenter,
            workers=opts.workers,
        )
        if report.near_duplicate_examples:  # what near-duplicate removal took, to look at
            sample = "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in report.near_duplicate_examples
            )
            (tmp / layout.NEAR_DUPLICATES_SAMPLE).write_text(sample, encoding="utf-8")
        replace_directory(tmp, opts.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"report": report.to_dict(), **meta}
