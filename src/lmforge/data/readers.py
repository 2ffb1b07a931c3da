"""Readers: each input format of `lmforge prepare`, streamed into Documents in bounded memory.

Text files (.txt, .md, .rst, .text, and any file of unknown type) are decoded block by block
and cut into pieces of at most `chunk_chars` characters (text_stream.py), so no file, however
shaped, is ever held whole. What one
document is follows `documents`: `chunk` (consecutive pieces of one file, later ones marked
`continued`), `paragraph` (each blank-line-separated paragraph) or `line` (each non-blank line);
a paragraph or line longer than `chunk_chars` becomes continued pieces too.

A JSONL record, a CSV/TSV row, a Parquet or Arrow row and a `datasets` row are one document
each, taken from `text_column` (a dotted path such as `meta.body` reaches into nested fields).
Text formats may be compressed (.gz, .bz2, .xz from the standard library; .zst needs
`zstandard`); Parquet, Arrow and `datasets` inputs need `pyarrow` / `datasets`, the `[data]`
extra, imported only when such an input is read.
"""

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.builtin import BUILTIN_PYTHON_DOCS, python_docs
from lmforge.data.text_stream import (
    CHUNK_CHARS,
    COMPRESSIONS,
    optional_module,
    split_text,
    text_blocks,
    text_lines,
)
from lmforge.errors import DataError

log = logging.getLogger(__name__)

TABLE_ROWS = 1024  # rows of a table turned into Python strings at a time
HF_PREFIX = "hf:"
TEXT_SUFFIXES = frozenset({".txt", ".md", ".text", ".rst"})
FORMATS = {
    **dict.fromkeys(TEXT_SUFFIXES, "text"),
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
STREAMED_FORMATS = frozenset({"text", "jsonl", "csv", "tsv"})  # those that may be compressed


@dataclass(frozen=True, slots=True)
class Document:
    """One unit of text; `continued` marks a later chunk of the same long file (no separator)."""

    text: str
    source: str
    continued: bool = False
    joiner: str = "\n\n"  # a continued piece: what stood between it and the piece before


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to read: what one document of a text file is, where a record's text lies, and what
    to do with invalid UTF-8."""

    documents: str = "chunk"
    text_column: str = "text"
    encoding_errors: str = "strict"
    chunk_chars: int = CHUNK_CHARS


# ---------------------------------------------------------------- what a path is


def format_of(path: str | Path) -> tuple[str | None, str | None]:
    """(format, compression suffix) named by a file's suffixes: ('jsonl', '.gz'), ('text',
    None); the format is None for a suffix this module does not know."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def is_known_file(path: str | Path) -> bool:
    """Whether a directory search takes this file: a known format, compressed only if text."""
    fmt, compression = format_of(path)
    return fmt is not None and (compression is None or fmt in STREAMED_FORMATS)


def is_saved_dataset(path: Path) -> bool:
    """Whether a directory was written by `datasets`' save_to_disk (a Dataset or DatasetDict)."""
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "dataset_info.json").is_file() and any(path.glob("*.arrow"))


def directory_sources(root: Path) -> list[str]:
    """Readable files and saved datasets under root, recursively, in path order."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        datasets = [name for name in subfolders if is_saved_dataset(here / name)]
        found += [here / name for name in datasets]
        subfolders[:] = sorted(set(subfolders) - set(datasets))  # a dataset is read whole
        found += [here / name for name in files if is_known_file(name)]
    return [str(p) for p in sorted(found)]


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """`hf:NAME[:CONFIG][:SPLIT]` -> (name, config or None, split or None)."""
    parts = spec.removeprefix(HF_PREFIX).split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"{spec!r}: write a Hub dataset as hf:NAME[:CONFIG][:SPLIT]")
    name, config, split = [*parts, None, None][:3]
    return name, config or None, split or None


# ---------------------------------------------------------------- any source


def read_source(source: str, options: ReadOptions) -> Iterator[Document]:
    """The documents of one resolved input: a file, a saved dataset, hf:... or builtin:..."""
    if source == BUILTIN_PYTHON_DOCS:
        return read_builtin(options)
    if source.startswith(HF_PREFIX):
        return read_hf(source, options)
    path = Path(source)
    if path.is_dir():
        return read_saved_dataset(path, options)
    fmt, compression = format_of(path)
    if compression and fmt is not None and fmt not in STREAMED_FORMATS:
        raise DataError(
            f"{path}: a compressed {fmt} file cannot be streamed; decompress it "
            "(Parquet and Arrow files compress their columns themselves)"
        )
    return _READERS[fmt or "text"](path, options)


def read_builtin(options: ReadOptions) -> Iterator[Document]:
    """builtin:python-docs: one document per text (already in memory, so `chunk` keeps each
    whole, as before), or its paragraphs or lines."""
    for name, text in python_docs():
        if options.documents == "chunk":
            yield Document(text, name)
            continue
        for line, piece, continued in split_text([text], options.documents, options.chunk_chars):
            yield Document(piece, f"{name}:{line}", continued)


# ---------------------------------------------------------------- text formats


def read_text(path: Path, options: ReadOptions) -> Iterator[Document]:
    """A text file as pieces (`chunk`; named by the path) or as paragraphs or lines (named
    path:line)."""
    blocks = text_blocks(path, options.encoding_errors)
    for line, text, continued in split_text(blocks, options.documents, options.chunk_chars):
        source = str(path) if options.documents == "chunk" else f"{path}:{line}"
        yield Document(text, source, continued)


def read_jsonl(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per JSON line (named path:line), from its `text_column` field."""
    lines = text_lines(text_blocks(path, options.encoding_errors))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = json_line(line, where)
        yield Document(json_text(record, options.text_column, where), where)


def json_line(line: str, where: str) -> Any:
    """One line of a JSONL file parsed; invalid JSON, a number over Python's 4300-digit limit
    or nesting deeper than the parser's recursion limit is a DataError naming the line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:  # int("9" * 5000): Python refuses integers that long
        raise DataError(f"{where}: not usable JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{where}: not usable JSON (nested too deeply)") from None


def read_csv(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named path:line) of a CSV file with a header row, from the
    `text_column` column; standard CSV quoting, so a quoted field may span lines."""
    _allow_long_csv_fields()
    rows = csv.reader(text_lines(text_blocks(path, options.encoding_errors)), strict=True)
    try:
        yield from _table_text_rows(path, _csv_rows(rows), options.text_column)
    except csv.Error as exc:
        raise DataError(f"{path}:{rows.line_num}: malformed CSV ({exc})") from None


def _csv_rows(rows: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) for each record of a csv.reader (a record may span lines)."""
    while True:
        first = rows.line_num + 1
        fields = next(rows, None)
        if fields is None:
            return
        yield first, fields


def read_tsv(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named path:line) of a TSV file with a header row, read as GLUE
    ships it: fields split on tabs and nothing else, quote characters are text."""
    lines = text_lines(text_blocks(path, options.encoding_errors))
    rows = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(lines, start=1))
    yield from _table_text_rows(path, rows, options.text_column)


def _table_text_rows(
    path: Path, rows: Iterator[tuple[int, list[str]]], column: str
) -> Iterator[Document]:
    """Documents from (line number, fields) rows, the first of them the header."""
    header = [name.strip() for name in next(rows, (0, []))[1]]
    if column not in header:
        raise DataError(
            f"{path}: no column {column!r}; columns found: {_names(header)}; "
            "choose one with --text-column"
        )
    index = header.index(column)
    for line, fields in rows:
        if not any(field.strip() for field in fields):
            continue  # a blank line
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{line}: {len(fields)} fields where the header has {len(header)}"
            )
        yield Document(fields[index], f"{path}:{line}")


def _allow_long_csv_fields() -> None:
    """The csv module refuses fields over 128 KiB by default; one document may be longer."""
    if csv.field_size_limit() < 1 << 30:
        csv.field_size_limit(1 << 30)


# ---------------------------------------------------------------- fields and columns


def json_text(record: Any, name: str, where: str) -> str:
    """The string a JSON record holds at field `name`, or at the dotted path `name`
    (`meta.body`); a miss names the fields that do exist."""
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object with a string {name!r} field, got {_kind(record)}"
        )
    value = record[name] if name in record else _follow(record, name.split("."), name, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} is {_kind(value)}, expected a string")
    return value


def _follow(value: Any, keys: list[str], name: str, where: str) -> Any:
    """Walk keys down nested objects; a miss says which fields the object there has."""
    for depth, key in enumerate(keys):
        parent = ".".join(keys[:depth])
        if not isinstance(value, dict):
            raise DataError(f"{where}: no field {name!r}: {parent!r} is {_kind(value)}")
        if key not in value:
            inside = f" in {parent!r}" if parent else ""
            raise DataError(
                f"{where}: no field {name!r}; fields found{inside}: {_names(value)}; "
                "choose one with --text-column (a.b for a nested field)"
            )
        value = value[key]
    return value


def _column(name: str, columns: list[str], where: str) -> tuple[str, list[str]]:
    """The table column that holds `name`, and the dotted path inside it: ('text', []) or,
    for a struct column, ('meta', ['body'])."""
    if name in columns:
        return name, []
    head, *rest = name.split(".")
    if rest and head in columns:
        return head, rest
    raise DataError(
        f"{where}: no column {name!r}; columns found: {_names(columns)}; "
        "choose one with --text-column"
    )


def _row_documents(
    where: str, batches: Iterable[list[Any]], name: str, head: str, rest: list[str]
) -> Iterator[Document]:
    """One document per value (named where:row, rows counted from 0), each a string."""
    row = 0
    for values in batches:
        for value in values:
            at = f"{where}: row {row}"
            text = _follow({head: value}, [head, *rest], name, at) if rest else value
            if not isinstance(text, str):
                raise DataError(f"{at}: column {name!r} holds {_kind(text)}, not text")
            yield Document(text, f"{where}:{row}")
            row += 1


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    kinds = {str: "a string", dict: "an object", list: "a list"}
    return kinds.get(type(value), type(value).__name__)


def _names(names: Iterable[str]) -> str:
    return ", ".join(map(str, names)) or "(none)"


# ---------------------------------------------------------------- tables and datasets


def read_parquet(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named path:row) of a Parquet file, read a batch at a time."""
    pa = optional_module("pyarrow", f"reading {path}")
    parquet = optional_module("pyarrow.parquet", f"reading {path}")
    try:
        table = parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    with table:
        head, rest = _column(options.text_column, table.schema_arrow.names, str(path))
        batches = table.iter_batches(batch_size=TABLE_ROWS, columns=[head])
        values = (batch.column(0).to_pylist() for batch in batches)
        yield from _row_documents(str(path), values, options.text_column, head, rest)


def read_arrow(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named path:row) of an Arrow IPC file or stream (memory-mapped,
    as `datasets` writes them)."""
    pa = optional_module("pyarrow", f"reading {path}")
    ipc = optional_module("pyarrow.ipc", f"reading {path}")
    with pa.memory_map(str(path)) as source:
        try:
            file = ipc.open_file(source)
            schema = file.schema
            batches = (file.get_batch(i) for i in range(file.num_record_batches))
        except pa.ArrowInvalid:
            try:
                source.seek(0)
                stream = ipc.open_stream(source)
            except pa.ArrowInvalid as exc:
                raise DataError(f"{path}: not an Arrow IPC file or stream ({exc})") from None
            schema, batches = stream.schema, iter(stream)
        head, rest = _column(options.text_column, schema.names, str(path))
        values = _column_slices(batch.column(head) for batch in batches)
        yield from _row_documents(str(path), values, options.text_column, head, rest)


def _column_slices(columns: Iterable[Any]) -> Iterator[list[Any]]:
    """Arrow arrays as Python lists of at most TABLE_ROWS values (a record batch can be big)."""
    for column in columns:
        for start in range(0, len(column), TABLE_ROWS):
            yield column.slice(start, TABLE_ROWS).to_pylist()


def read_saved_dataset(path: Path, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named path:row) of a `datasets` save_to_disk directory; of a
    DatasetDict, the 'train' split or the only one (pass DIR/SPLIT for another)."""
    datasets = optional_module("datasets", f"reading the saved dataset {path}")
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable datasets directory ({exc})") from None
    split = _one_split(data, str(path), f"{path}/SPLIT")
    yield from _dataset_documents(split, str(path), options)


def read_hf(spec: str, options: ReadOptions) -> Iterator[Document]:
    """One document per row (named spec:row) of hf:NAME[:CONFIG][:SPLIT], loaded (and cached)
    by datasets.load_dataset; without a split, 'train' or the only one."""
    name, config, split = parse_hf(spec)
    datasets = optional_module("datasets", f"reading {spec}")
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # any loader failure is a bad input
        raise DataError(f"{spec}: cannot load dataset {name!r} ({exc})") from None
    hint = f"hf:{name}:{config or ''}:SPLIT"
    yield from _dataset_documents(_one_split(data, spec, hint), spec, options)


def _one_split(data: Any, where: str, hint: str) -> Any:
    """A Dataset as is; of a DatasetDict, its 'train' split or its only one."""
    if not isinstance(data, dict):
        return data
    if "train" in data or len(data) == 1:
        chosen = "train" if "train" in data else next(iter(data))
        if len(data) > 1:
            log.info("%s: reading split %r of %s", where, chosen, ", ".join(data))
        return data[chosen]
    raise DataError(f"{where} has splits {_names(data)} and none is 'train'; name one: {hint}")


def _dataset_documents(dataset: Any, where: str, options: ReadOptions) -> Iterator[Document]:
    head, rest = _column(options.text_column, list(dataset.column_names), where)
    batches = dataset.select_columns([head]).iter(batch_size=TABLE_ROWS)
    values = (batch[head] for batch in batches)
    yield from _row_documents(where, values, options.text_column, head, rest)


_READERS: dict[str, Callable[[Path, ReadOptions], Iterator[Document]]] = {
    "text": read_text,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
    "arrow": read_arrow,
}
