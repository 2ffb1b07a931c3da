"""Text streams: a file's bytes decompressed block by block, decoded as UTF-8, and cut into
pieces of bounded length, so no file, however shaped, is ever held whole.

A piece ends at a paragraph break (a blank line) where there is one in reach, else at a line
break, a sentence end or a space, and at exactly the limit as a last resort. readers.py turns
the pieces into Documents, one format at a time.
"""

import bz2
import codecs
import gzip
import importlib
import lzma
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from lmforge.errors import DataError

CHUNK_CHARS = 1 << 16  # the most characters in one piece of a text file
READ_BYTES = 1 << 18  # bytes read (or decompressed) at a time
DOCUMENT_MODES = ("chunk", "paragraph", "line")
INSTALL_DATA = "pip install 'lmforge[data]'"
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bzip2", ".xz": "xz"}
_BINARY_PROBE_BYTES = 8192
_ZSTD_INPUT_BYTES = 1 << 15
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_LINE_BREAK = re.compile(r"\n")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*\s+|[。！？][」』”’)）]*")
_SPACE = re.compile(r"\s+")
_CUT_LEVELS = {  # where a too-long piece may end, best first
    "chunk": (_PARAGRAPH_BREAK, _LINE_BREAK, _SENTENCE_END, _SPACE),
    "paragraph": (_LINE_BREAK, _SENTENCE_END, _SPACE),
    "line": (_SENTENCE_END, _SPACE),
}
_SEPARATORS = {"chunk": None, "paragraph": _PARAGRAPH_BREAK, "line": _LINE_BREAK}


def compression_of(path: str | Path) -> str | None:
    """The compression suffix of a file name (.gz, .zst, .bz2, .xz), or None."""
    suffix = Path(path).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def optional_module(name: str, purpose: str) -> Any:
    """Import a package of the `[data]` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        package = name.partition(".")[0]
        raise DataError(f"{purpose} needs {package}: {INSTALL_DATA}") from None


# ---------------------------------------------------------------- bytes and text


def byte_blocks(path: Path, block_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """A file's bytes in blocks, decompressed as its suffix says; a corrupt or truncated
    compressed file stops with a DataError naming it."""
    compression = compression_of(path)
    opener: Callable[..., BinaryIO] | None = {
        ".gz": gzip.open,
        ".bz2": bz2.open,
        ".xz": lzma.open,
    }.get(compression or "")
    try:
        if compression == ".zst":
            with path.open("rb") as raw:
                yield from _zstd_blocks(path, raw)
            return
        with opener(path, "rb") if opener else path.open("rb") as handle:
            while block := handle.read(block_bytes):
                yield block
    except (OSError, EOFError, lzma.LZMAError) as exc:
        what = f"a valid {COMPRESSIONS[compression]} file" if compression else "readable"
        raise DataError(f"{path}: not {what} ({exc})") from None


def _zstd_blocks(path: Path, raw: BinaryIO) -> Iterator[bytes]:
    """Zstandard frames decompressed piece by piece; unlike zstandard's stream reader this
    notices a file that ends inside a frame."""
    zstd = optional_module("zstandard", f"reading {path}")
    decompressor = zstd.ZstdDecompressor()
    frame, pending, inside = decompressor.decompressobj(), b"", False
    try:
        while data := pending or raw.read(_ZSTD_INPUT_BYTES):
            pending = b""
            block = frame.decompress(data)
            inside = not frame.eof
            if frame.eof:  # the next frame, if any, starts in what this one left
                pending = frame.unused_data
                frame = decompressor.decompressobj()
            if block:
                yield block
    except zstd.ZstdError as exc:
        raise DataError(f"{path}: not a valid zstd file ({exc})") from None
    if inside:
        raise DataError(f"{path}: the zstd data ends in the middle of a frame (truncated file?)")


def text_blocks(path: Path, encoding_errors: str = "strict") -> Iterator[str]:
    """A file's text, decoded as UTF-8 block by block (a leading BOM dropped). A NUL byte in the
    first 8 KiB (a binary file) or invalid UTF-8 stops with the file, byte offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")(encoding_errors)
    offset = newlines = 0  # bytes read and newlines decoded so far
    started = False
    for raw in chain(byte_blocks(path), [b""]):
        if offset < _BINARY_PROBE_BYTES:
            _check_not_binary(path, raw[: _BINARY_PROBE_BYTES - offset], offset)
        held = len(decoder.getstate()[0])  # undecoded bytes kept from the block before
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            at = offset - held + exc.start
            line = newlines + exc.object[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{path}: invalid UTF-8 at byte offset {at} (line {line}); "
                "fix the file's encoding or pass --encoding-errors replace"
            ) from None
        offset += len(raw)
        if text and not started:
            text, started = text.removeprefix("\ufeff"), True
        if text:
            newlines += text.count("\n")
            yield text


def _check_not_binary(path: Path, head: bytes, offset: int) -> None:
    if (nul := head.find(b"\x00")) >= 0:
        raise DataError(
            f"{path} looks like a binary file (NUL byte at offset {offset + nul}); give text "
            "files (.txt, .md, .jsonl, .csv, .tsv, compressed or not), .parquet or .arrow"
        )


def text_lines(blocks: Iterable[str]) -> Iterator[str]:
    """The lines of text given in blocks, each with its "\\n" (the last one perhaps without)."""
    partial: list[str] = []
    for block in blocks:
        lines = block.split("\n")
        if len(lines) > 1:
            partial.append(lines[0])
            yield "".join(partial) + "\n"
            partial = []
            for line in lines[1:-1]:
                yield line + "\n"
        if lines[-1]:
            partial.append(lines[-1])
    if partial:
        yield "".join(partial)


# ---------------------------------------------------------------- cutting text into pieces


def split_text(
    blocks: Iterable[str], documents: str = "chunk", limit: int = CHUNK_CHARS
) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, continued) for each piece of a text given in blocks.

    Every piece holds at most `limit` characters and the text is never held longer than
    `limit` plus one block. `chunk`: consecutive pieces, each after the first continued, so
    that they join back into the text. `paragraph` / `line`: one piece per blank-line-separated
    paragraph or per line (the separators dropped); one longer than `limit` is cut into
    continued pieces. A cut falls after the last paragraph break, else line break, sentence
    end or space in the second half of the `limit` window, else at `limit` exactly. Pieces of
    whitespace only are skipped. The pieces do not depend on where the blocks are cut.
    """
    if documents not in _SEPARATORS:
        raise DataError(f"--documents must be one of {', '.join(DOCUMENT_MODES)}")
    separator, levels = _SEPARATORS[documents], _CUT_LEVELS[documents]
    limit = max(limit, 2)
    buffer, pos, line = "", 0, 1
    continued = False  # the next piece continues the one before
    for block in chain(blocks, [None]):
        if block is not None:
            buffer, pos = buffer[pos:] + block, 0
        while True:
            match = separator.search(buffer, pos) if separator else None
            if match and match.start() - pos <= limit:
                end, after, whole = match.start(), match.end(), True
            elif len(buffer) - pos > limit:
                end = after = _cut(buffer, pos, limit, levels)
                whole = False
            elif block is None and pos < len(buffer):
                end = after = len(buffer)
                whole = True
            else:
                break  # wait for more text
            piece = buffer[pos:end]
            if stripped := piece.lstrip():
                yield line + piece.count("\n", 0, len(piece) - len(stripped)), piece, continued
                continued = True
            if whole:
                continued = False
            line += buffer.count("\n", pos, after)
            pos = after


def _cut(text: str, start: int, limit: int, levels: tuple[re.Pattern[str], ...]) -> int:
    """Where a piece of text[start:] at most `limit` long ends: just after the last match of
    the first level that matches in the second half of the window, else at the limit."""
    end, floor = start + limit, start + limit // 2
    for level in levels:
        if last := deque(level.finditer(text, floor, end), maxlen=1):
            return last[0].end()
    return end
