"""Stream documents from files, directories, globs, JSONL and the built-in corpus; clean; dedup."""

import glob
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.data.builtin import BUILTIN_PYTHON_DOCS, python_docs
from lmforge.errors import DataError

TEXT_SUFFIXES = frozenset({".txt", ".md", ".text", ".rst", ".jsonl"})
CHUNK_CHARS = 1 << 16  # a long text file is cut at paragraph breaks into ~64K-char documents
_BINARY_PROBE_BYTES = 8192
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class Document:
    """One unit of text; `continued` marks a later chunk of the same long file (no separator)."""

    text: str
    source: str
    continued: bool = False


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

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.sources} sources, {self.documents_in} documents in -> {self.documents_out} out "
            f"({self.duplicates} exact duplicates, {self.too_short} too short dropped); "
            f"{self.chars_in:,} -> {self.chars_out:,} characters"
        )


def clean_text(text: str) -> str:
    """NFC-normalise, drop control characters, normalise line ends and spaces, trim blank runs."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def resolve_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand directories (recursively) and globs into a sorted list of files; fail on a miss."""
    resolved: list[str] = []
    for item in inputs:
        path = Path(item)
        if item == BUILTIN_PYTHON_DOCS:
            resolved.append(item)
        elif item.startswith("builtin:"):
            raise DataError(f"unknown built-in corpus {item!r}; available: {BUILTIN_PYTHON_DOCS}")
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not files:
                raise DataError(
                    f"directory {item} holds no {', '.join(sorted(TEXT_SUFFIXES))} files"
                )
            resolved += [str(p) for p in files]
        elif path.is_file():
            resolved.append(item)
        elif matches := sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file()):
            resolved += matches
        else:
            raise DataError(f"input not found: {item} (give files, directories or glob patterns)")
    if not resolved:
        raise DataError("no input given: pass --input PATH (or builtin:python-docs)")
    return resolved


def read_documents(sources: list[str], encoding_errors: str = "strict") -> Iterator[Document]:
    """Stream raw documents from resolved sources, never holding a whole large file in memory."""
    for source in sources:
        if source == BUILTIN_PYTHON_DOCS:
            for name, text in python_docs():
                yield Document(text, name)
        elif source.endswith(".jsonl"):
            yield from _read_jsonl(Path(source), encoding_errors)
        else:
            yield from _read_text_chunks(Path(source), encoding_errors)


def _decoded_lines(path: Path, encoding_errors: str) -> Iterator[tuple[int, str]]:
    """(line number, text) per line, checking for binary content and invalid UTF-8 as we go."""
    with path.open("rb") as handle:
        head = handle.read(_BINARY_PROBE_BYTES)
        if (nul := head.find(b"\x00")) >= 0:
            raise DataError(
                f"{path} looks like a binary file (NUL byte at offset {nul}); "
                "give text files (.txt, .md, .jsonl)"
            )
        handle.seek(0)
        offset = 0
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8", errors=encoding_errors)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}: invalid UTF-8 at byte offset {offset + exc.start} (line {number}); "
                    "fix the file's encoding or pass --encoding-errors replace"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            yield number, line


def _read_text_chunks(path: Path, encoding_errors: str) -> Iterator[Document]:
    """A text file as one document, or as ~CHUNK_CHARS chunks cut at blank lines if it is long."""
    lines: list[str] = []
    size, chunks = 0, 0
    for _, line in _decoded_lines(path, encoding_errors):
        if size >= CHUNK_CHARS and not line.strip():
            yield Document("".join(lines), str(path), continued=chunks > 0)
            lines, size, chunks = [], 0, chunks + 1
            continue
        lines.append(line)
        size += len(line)
    if lines:
        yield Document("".join(lines), str(path), continued=chunks > 0)


def _read_jsonl(path: Path, encoding_errors: str) -> Iterator[Document]:
    """One document per JSON line, taken from its `text` field."""
    for number, line in _decoded_lines(path, encoding_errors):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{number}: expected an object with a string 'text' field")
        yield Document(record["text"], f"{path}:{number}")


def _origin(source: str) -> str:
    """The file a document came from (a JSONL document is named path:line)."""
    path, _, line = source.rpartition(":")
    return path if line.isdigit() and path.endswith(".jsonl") else source


def clean_documents(
    documents: Iterable[Document], report: CorpusReport, min_chars: int = 16
) -> Iterator[Document]:
    """Clean each document, dropping exact duplicates and those shorter than min_chars.

    Later chunks of a long file are never dropped (they are parts of one document); if the
    chunk before one was dropped, it starts a document of its own instead of continuing it.
    """
    seen: set[bytes] = set()
    sources: set[str] = set()
    previous_dropped = False
    for doc in documents:
        report.documents_in += 1
        report.chars_in += len(doc.text)
        sources.add(_origin(doc.source))
        report.sources = len(sources)
        text = clean_text(doc.text)
        if doc.continued:
            yield Document(text, doc.source, continued=not previous_dropped)
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


def stream_corpus(
    inputs: Iterable[str], min_chars: int = 16, encoding_errors: str = "strict"
) -> tuple[Iterator[Document], CorpusReport]:
    """Resolve inputs now (so a missing path fails early) and return cleaned documents + report."""
    if encoding_errors not in ("strict", "replace", "ignore"):
        raise DataError("--encoding-errors must be strict, replace or ignore")
    sources = resolve_inputs(inputs)
    report = CorpusReport()
    return clean_documents(read_documents(sources, encoding_errors), report, min_chars), report
