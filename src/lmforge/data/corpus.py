"""Resolve inputs, stream their documents (readers.py), clean them, drop duplicates, report."""

import glob
import hashlib
import heapq
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lmforge.data.builtin import BUILTIN_PYTHON_DOCS
from lmforge.data.near_dedup import NearDuplicateIndex
from lmforge.data.readers import (
    FORMATS,
    HF_PREFIX,
    Document,
    ReadOptions,
    directory_sources,
    is_saved_dataset,
    parse_hf,
    read_source,
)
from lmforge.data.text_stream import CHUNK_CHARS, DOCUMENT_MODES, optional_module
from lmforge.errors import DataError

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_UNUSUAL = re.compile(f"{_CONTROL.pattern}|{_ODD_SPACES.pattern}")
_ROW_NUMBER = re.compile(r":\d+$")


@dataclass(slots=True)
class CorpusReport:
    """What cleaning did: documents and characters in and out, and why documents were dropped."""

    sources: int = 0
    documents_in: int = 0
    documents_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    duplicates: int = 0
    too_short: int = 0
    near_duplicates: int = 0  # with --near-dedup: dropped as near-copies of an earlier document
    near_duplicate_examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        near = f", {self.near_duplicates} near duplicates" if self.near_duplicates else ""
        return (
            f"{self.sources} sources, {self.documents_in} documents in -> {self.documents_out} out "
            f"({self.duplicates} exact duplicates{near}, {self.too_short} too short dropped); "
            f"{self.chars_in:,} -> {self.chars_out:,} characters"
        )


def clean_text(text: str) -> str:
    """NFC-normalise, drop control characters, normalise line ends and spaces, trim blank runs.

    Each rewrite runs only where a quick scan finds something for it to do: most text has
    nothing to fix, and the substitutions are the slow part of reading a corpus. NFC comes after
    the control characters are gone: one between a letter and its accent would otherwise keep
    them apart, and a second cleaning would compose them (cleaning is idempotent).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _UNUSUAL.search(text):
        text = _ODD_SPACES.sub(" ", _CONTROL.sub("", text))
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = "\n".join([line.rstrip(" \t") for line in text.split("\n")])
    while "\n\n\n" in text:  # each pass shortens every run of three or more line breaks
        text = text.replace("\n\n\n", "\n\n")
    return text.strip("\n")


def resolve_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand directories (recursively) and globs into a sorted list of sources; fail on a miss.

    A `datasets` save_to_disk directory, hf:NAME[:CONFIG][:SPLIT] and builtin:python-docs are
    sources of their own; a directory search takes every file whose type readers.py knows.
    """
    resolved: list[str] = []
    for item in inputs:
        path = Path(item)
        if item == BUILTIN_PYTHON_DOCS:
            resolved.append(item)
        elif item.startswith("builtin:"):
            raise DataError(f"unknown built-in corpus {item!r}; available: {BUILTIN_PYTHON_DOCS}")
        elif item.startswith(HF_PREFIX):
            parse_hf(item)  # a malformed name fails now
            resolved.append(item)
        elif path.is_dir() and is_saved_dataset(path):
            resolved.append(item)
        elif path.is_dir():
            if not (found := directory_sources(path)):
                known = ", ".join(sorted(FORMATS))
                raise DataError(
                    f"directory {item} holds no {known} files (compressed or not) "
                    "nor saved datasets"
                )
            resolved += found
        elif path.is_file():
            resolved.append(item)
        elif matches := sorted(
            m for m in glob.glob(item, recursive=True) if Path(m).is_file() or _dataset_dir(m)
        ):
            resolved += matches
        else:
            raise DataError(
                f"input not found: {item} (give files, directories, glob patterns, "
                "hf:NAME or builtin:python-docs)"
            )
    if not resolved:
        raise DataError("no input given: pass --input PATH (or builtin:python-docs)")
    return resolved


def _dataset_dir(path: str) -> bool:
    return Path(path).is_dir() and is_saved_dataset(Path(path))


def read_documents(sources: list[str], options: ReadOptions | None = None) -> Iterator[Document]:
    """Stream raw documents from resolved sources, never holding a whole large file in memory."""
    for source in sources:
        yield from read_source(source, options or ReadOptions())


def _origin(source: str) -> str:
    """The input a document came from (a record, row or line of one is named source:number)."""
    return _ROW_NUMBER.sub("", source)


def joiner_for(gap: str) -> str:
    """What joins a continued piece to the one before, from the whitespace cut between them: a
    blank line stays a paragraph break, a line break a line break, spaces one space; a cut in
    the middle of a word joins with nothing."""
    if "\n\n" in gap:
        return "\n\n"
    if "\n" in gap:
        return "\n"
    return " " if gap else ""


def fix_mojibake(documents: Iterable[Document]) -> Iterator[Document]:
    """Repair text decoded with the wrong codec ("cafÃ©" -> "café", "â€œ" -> "“") with ftfy,
    changing nothing else: quotes stay curly, full-width forms and ligatures stay (that is
    --normalize's job), HTML entities stay. Needs the [data] extra."""
    ftfy = optional_module("ftfy", "--fix-text")
    config = ftfy.TextFixerConfig(
        unescape_html=False,
        uncurl_quotes=False,
        fix_character_width=False,
        fix_latin_ligatures=False,
        normalization=None,
    )
    for doc in documents:
        yield replace(doc, text=ftfy.fix_text(doc.text, config))


def clean_documents(
    documents: Iterable[Document], report: CorpusReport, min_chars: int = 16
) -> Iterator[Document]:
    """Clean each document, dropping exact duplicates and those shorter than min_chars.

    Later chunks of a long file are never dropped (they are parts of one document) unless
    nothing is left of them; if the chunk before one was dropped, it starts a document of its
    own instead of continuing it.
    """
    seen: set[bytes] = set()
    sources: set[str] = set()
    previous_dropped = False
    previous_tail = ""  # the whitespace the previous raw piece ended with
    for doc in documents:
        gap = previous_tail + doc.text[: len(doc.text) - len(doc.text.lstrip())]
        previous_tail = doc.text[len(doc.text.rstrip()) :]
        report.documents_in += 1
        report.chars_in += len(doc.text)
        sources.add(_origin(doc.source))
        report.sources = len(sources)
        text = clean_text(doc.text)
        if doc.continued and not text:  # control characters only: nothing to add
            report.too_short += 1
            continue
        if doc.continued:
            yield Document(text, doc.source, not previous_dropped, joiner_for(gap))
            previous_dropped = False
        elif len(text) < min_chars:
            report.too_short += 1
            previous_dropped = True
            continue
        else:
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            previous_dropped = digest in seen
            if previous_dropped:
                report.duplicates += 1
                continue
            seen.add(digest)
            yield Document(text, doc.source)
        report.documents_out += 1
        report.chars_out += len(text)


def drop_near_duplicates(
    documents: Iterable[Document], report: CorpusReport, threshold: float, examples: int = 5
) -> Iterator[Document]:
    """Drop every document whose estimated Jaccard similarity (MinHash + LSH, data/near_dedup)
    with an earlier kept one is >= threshold, with the later pieces of a dropped long file;
    counts them and keeps the first `examples` as {removed, position, similar_to, similarity}
    records (positions count the cleaned documents from 0; texts are not kept, memory stays
    bounded)."""
    index = NearDuplicateIndex(threshold)
    dropping = False
    for position, doc in enumerate(documents):
        if doc.continued:
            if not dropping:
                yield doc
            else:
                report.documents_out -= 1
                report.chars_out -= len(doc.text)
            continue
        match = index.check_and_add(doc.text, key=position)
        dropping = match is not None
        if not dropping:
            yield doc
            continue
        report.near_duplicates += 1
        report.documents_out -= 1
        report.chars_out -= len(doc.text)
        if len(report.near_duplicate_examples) < examples:
            similar, similarity = match
            report.near_duplicate_examples.append(
                {
                    "removed": doc.text[:200],
                    "source": doc.source,
                    "position": position,
                    "similar_to": int(similar),
                    "similarity": round(float(similarity), 3),
                }
            )


def training_sample(texts: Iterable[str], budget_chars: int, seed: int = 0) -> list[str]:
    """A uniform random sample of the documents, at most budget_chars characters, in corpus order.

    Each document draws a random key; a heap keeps the documents with the smallest keys, dropping
    the largest-key one while the total exceeds the budget, so memory stays near the budget
    whatever the corpus (a corpus within the budget comes back whole). budget_chars <= 0 keeps
    everything. The tokenizer trains on this: a vocabulary of a few thousand to tens of thousands
    of tokens barely changes past a few tens of megabytes, while training time grows with the text.
    """
    if budget_chars <= 0:
        return list(texts)
    rng = random.Random(seed)
    heap: list[tuple[float, int, str]] = []  # (-key, position, text): the largest key on top
    size = 0
    for position, text in enumerate(texts):
        heapq.heappush(heap, (-rng.random(), position, text))
        size += len(text)
        while size > budget_chars:
            size -= len(heapq.heappop(heap)[2])
    return [text for _, _, text in sorted(heap, key=lambda entry: entry[1])]


def stream_corpus(
    inputs: Iterable[str],
    min_chars: int = 16,
    encoding_errors: str = "strict",
    documents: str = "chunk",
    text_column: str = "text",
    chunk_chars: int = CHUNK_CHARS,
    near_dedup: float = 0.0,
    fix_text: bool = False,
) -> tuple[Iterator[Document], CorpusReport]:
    """Resolve inputs now (so a missing path fails early) and return cleaned documents + report.

    documents: what one document of a text file is (chunk, paragraph or line); text_column:
    the field of a JSONL record or the column of a table or dataset that holds the text;
    near_dedup: drop near-duplicates at this estimated Jaccard similarity (0: off); fix_text:
    repair mojibake with ftfy before cleaning.
    """
    if not 0 <= near_dedup <= 1:
        raise DataError("--near-dedup must be a similarity in (0, 1], e.g. 0.8 (0 turns it off)")
    if encoding_errors not in ("strict", "replace", "ignore"):
        raise DataError("--encoding-errors must be strict, replace or ignore")
    if documents not in DOCUMENT_MODES:
        raise DataError(f"--documents must be one of {', '.join(DOCUMENT_MODES)}")
    if not text_column:
        raise DataError("--text-column must name a field or column")
    sources = resolve_inputs(inputs)
    options = ReadOptions(documents, text_column, encoding_errors, chunk_chars)
    report = CorpusReport()
    raw = read_documents(sources, options)
    cleaned = clean_documents(fix_mojibake(raw) if fix_text else raw, report, min_chars)
    if near_dedup > 0:
        cleaned = drop_near_duplicates(cleaned, report, near_dedup)
    return cleaned, report
