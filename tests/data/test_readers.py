"""Input readers: text of any shape in bounded pieces, compressed files, JSONL fields, tables,
saved datasets and hf: names, each read as the same documents; errors say where and what exists."""

import bz2
import csv
import gzip
import itertools
import json
import lzma
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from lmforge.data import text_stream
from lmforge.data.corpus import clean_text, resolve_inputs, stream_corpus
from lmforge.data.readers import ReadOptions, read_source
from lmforge.data.text_stream import CHUNK_CHARS, split_text
from lmforge.errors import DataError

WORDS = ["the", "a", "river", "stone", "quiet", "morning", "lamp", "over", "under", "bright"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _reviews(count: int, seed: int = 0) -> list[str]:
    """Distinct multi-line reviews (1 to 3 lines each)."""
    rng = random.Random(seed)
    return [
        "\n".join(
            f"Review {i} line {j}: {_sentence(rng, rng.randint(4, 12))}"
            for j in range(rng.randint(1, 3))
        )
        for i in range(count)
    ]


def _records(count: int = 60, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "text": f'Record {i}: {_sentence(rng, 8)}\nSecond line, with a comma and "quotes".',
            "meta": {"body": f"Nested body {i}: {_sentence(rng, 6)}", "n": i},
        }
        for i in range(count)
    ]


def _texts(inputs: list[str], **kwargs) -> list[str]:
    return [d.text for d in stream_corpus(inputs, **kwargs)[0]]


def _compress(path: Path, suffix: str) -> Path:
    """path compressed into path + suffix (.gz, .bz2, .xz or .zst)."""
    data = path.read_bytes()
    out = path.with_name(path.name + suffix)
    if suffix == ".zst":
        import zstandard

        packed = zstandard.ZstdCompressor().compress(data)
    else:
        packed = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix](data)
    out.write_bytes(packed)
    return out


# ---------------------------------------------------------------- text of any shape


def test_file_without_blank_lines_becomes_bounded_pieces_that_join_back(tmp_path: Path) -> None:
    """The issue's case: 2,000 lines and no blank line used to be one 400K-character document."""
    rng = random.Random(0)
    lines = [f"Line {i}: " + " ".join(_sentence(rng, 6) for _ in range(5)) for i in range(2000)]
    text = "\n".join(lines) + "\n"
    assert len(text) > 5 * CHUNK_CHARS
    path = tmp_path / "no_blank_lines.txt"
    path.write_text(text)

    raw = list(read_source(str(path), ReadOptions()))
    assert len(raw) >= len(text) // CHUNK_CHARS + 1
    assert all(len(d.text) <= CHUNK_CHARS for d in raw)
    assert all(len(d.text) > CHUNK_CHARS // 2 for d in raw[:-1])
    assert "".join(d.text for d in raw) == text  # nothing lost, nothing reordered
    assert all(d.text.endswith("\n") for d in raw)  # every cut at a line break
    assert [d.continued for d in raw] == [False] + [True] * (len(raw) - 1)

    cleaned = list(stream_corpus([str(path)])[0])
    assert len(cleaned) == len(raw)
    assert all(len(d.text) <= CHUNK_CHARS for d in cleaned)
    assert "\n".join(d.text for d in cleaned) == clean_text(text)


def test_cuts_fall_back_to_sentence_ends_then_spaces_then_a_fixed_length() -> None:
    rng = random.Random(2)
    sentences = " ".join(_sentence(rng, rng.randint(3, 9)) for _ in range(400))  # one line
    pieces = [t for _, t, _ in split_text([sentences], "chunk", 500)]
    assert "".join(pieces) == sentences
    assert all(len(p) <= 500 for p in pieces)
    assert all(p.endswith(". ") for p in pieces[:-1])

    words = " ".join(rng.choice(WORDS) for _ in range(2000))  # no sentence end at all
    pieces = [t for _, t, _ in split_text([words], "chunk", 500)]
    assert "".join(pieces) == words
    assert all(250 < len(p) <= 500 and p.endswith(" ") for p in pieces[:-1])

    solid = "x" * 2345  # nothing to cut at
    pieces = [t for _, t, _ in split_text([solid], "chunk", 500)]
    assert [len(p) for p in pieces] == [500, 500, 500, 500, 345]


def test_paragraph_cut_is_preferred_to_a_later_line_break() -> None:
    text = "first paragraph line\n" * 30 + "\n" + "second paragraph line\n" * 30
    pieces = [t for _, t, _ in split_text([text], "chunk", 1000)]
    assert pieces[0] == "first paragraph line\n" * 30 + "\n"
    assert "".join(pieces) == text


@pytest.mark.parametrize("documents", ["chunk", "paragraph", "line"])
def test_pieces_do_not_depend_on_where_the_blocks_are_cut(documents: str) -> None:
    rng = random.Random(3)
    text = "\n\n \n".join(_reviews(300)) + "\n" + "y" * 900 + "\n\n" + "z " * 700
    whole = list(split_text([text], documents, 256))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 200)))
        blocks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert list(split_text(blocks, documents, 256)) == whole


def test_documents_paragraph_and_line_count_reviews(tmp_path: Path) -> None:
    """6,000 blank-line-separated reviews used to come back as 13 documents of ~64K."""
    reviews = _reviews(6000)
    path = tmp_path / "reviews.txt"
    # extra blank lines, a whitespace-only line and CRLF line ends must not matter
    body = "\n\n".join(reviews[:3000]) + "\n\n\n  \n" + "\r\n\r\n".join(reviews[3000:])
    path.write_text(body, newline="")
    paragraphs = list(stream_corpus([str(path)], documents="paragraph")[0])
    assert len(paragraphs) == 6000
    assert [d.text for d in paragraphs] == [clean_text(r) for r in reviews]
    assert not any(d.continued for d in paragraphs)

    lines = _texts([str(path)], documents="line")
    assert lines == [clean_text(line) for r in reviews for line in r.split("\n")]

    chunks = list(stream_corpus([str(path)])[0])
    assert len(chunks) == pytest.approx(len(body) / CHUNK_CHARS, abs=3)
    assert all(len(d.text) <= CHUNK_CHARS for d in chunks)
    assert "\n\n".join(d.text for d in chunks) == clean_text(body)


def test_paragraph_and_line_documents_are_named_by_their_first_line(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text("\n\nfirst paragraph, line 3\nstill it\n\n\n  \nsecond paragraph, line 8\n")
    paragraphs = list(read_source(str(path), ReadOptions(documents="paragraph")))
    assert [d.source for d in paragraphs] == [f"{path}:3", f"{path}:8"]
    lines = list(read_source(str(path), ReadOptions(documents="line")))
    assert [d.source for d in lines] == [f"{path}:3", f"{path}:4", f"{path}:8"]
    _, report = stream_corpus([str(path)], documents="line", min_chars=1)
    list(_)
    assert report.sources == 1


@pytest.mark.parametrize("documents", ["paragraph", "line"])
def test_a_paragraph_or_line_longer_than_the_limit_becomes_continued_pieces(
    documents: str,
) -> None:
    rng = random.Random(4)
    long = " ".join(_sentence(rng, 7) for _ in range(200))  # one line, ~9K characters
    text = f"short one before\n\n{long}\n\nshort one after\n"
    pieces = list(split_text([text], documents, 1000))
    assert pieces[0] == (1, "short one before", False)
    assert pieces[-1][1].rstrip("\n") == "short one after"  # the last one keeps its line end
    middle = pieces[1:-1]
    assert len(middle) >= 9
    assert [c for _, _, c in middle] == [False] + [True] * (len(middle) - 1)
    assert "".join(t for _, t, _ in middle) == long
    assert all(len(t) <= 1000 for _, t, _ in pieces)


def test_long_piece_chains_survive_cleaning(tmp_path: Path) -> None:
    path = tmp_path / "one_long_line.txt"
    path.write_text("x" * 50 + "\x01" * 40 + "y" * 30)  # the middle piece cleans to nothing
    docs = list(stream_corpus([str(path)], chunk_chars=40)[0])
    assert [d.continued for d in docs] == [False, True, True]
    assert "".join(d.text for d in docs) == "x" * 50 + "y" * 30


@pytest.mark.parametrize("documents", ["chunk", "paragraph", "line"])
def test_reading_a_large_file_keeps_memory_bounded(tmp_path: Path, documents: str) -> None:
    """A ~30 MB file without blank lines is read with Python allocations peaking far below its
    size (the issue: 150 MB without blank lines passed 16 GB)."""
    rng = random.Random(5)
    pool = [" ".join(_sentence(rng, rng.randint(4, 30)) for _ in range(5)) for _ in range(97)]
    path = tmp_path / "big.txt"
    with path.open("w") as handle:
        for i in range(65_000):
            handle.write(f"{i} {pool[i % 97]}\n")
    size = path.stat().st_size
    assert size > 28_000_000
    tracemalloc.start()
    try:
        count = chars = 0
        for doc in read_source(str(path), ReadOptions(documents=documents)):
            count += 1
            chars += len(doc.text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count > 400
    assert chars >= size - 2 * count  # line mode drops the line breaks
    assert peak < size / 8, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_cleaned_chunks_of_a_large_file_keep_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = "no blank line anywhere in this file, only one sentence after another.\n"
    path.write_text(line * 420_000)  # ~30 MB
    size = path.stat().st_size
    tracemalloc.start()
    try:
        documents, report = stream_corpus([str(path)])
        longest = max(len(d.text) for d in documents)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert longest <= CHUNK_CHARS
    assert report.documents_out > 400
    assert peak < size / 4, f"peak {peak:,} bytes for a {size:,}-byte file"


# ---------------------------------------------------------------- compressed files


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("name", ["reviews.txt", "reviews.jsonl", "reviews.csv", "reviews.tsv"])
def test_compressed_files_read_like_the_plain_file(tmp_path: Path, name: str, suffix: str) -> None:
    reviews = _reviews(400, seed=6)
    plain = tmp_path / name
    if name.endswith(".txt"):
        plain.write_text("\n\n".join(reviews) + "\n")
    elif name.endswith(".jsonl"):
        plain.write_text("".join(json.dumps({"text": r}) + "\n" for r in reviews))
    elif name.endswith(".csv"):
        with plain.open("w", newline="") as handle:
            csv.writer(handle).writerows([["id", "text"], *[[i, r] for i, r in enumerate(reviews)]])
    else:
        rows = [f"{i}\t{r.replace(chr(10), ' ')}" for i, r in enumerate(reviews)]
        plain.write_text("id\ttext\n" + "\n".join(rows) + "\n")
    packed = _compress(plain, suffix)
    for documents in ("chunk", "paragraph"):
        expected = _texts([str(plain)], documents=documents)
        assert _texts([str(packed)], documents=documents) == expected
    assert len(_texts([str(packed)], documents="paragraph")) == 400


def test_zstd_frames_are_all_read(tmp_path: Path) -> None:
    import zstandard

    parts = ["first frame of text\n", "second frame of text\n", "third frame of text\n"]
    path = tmp_path / "frames.txt.zst"
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(p.encode()) for p in parts))
    assert _texts([str(path)], documents="line") == [p.strip() for p in parts]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_truncated_or_corrupt_compressed_file_names_the_file(tmp_path: Path, suffix: str) -> None:
    plain = tmp_path / "a.txt"
    rng = random.Random(7)
    plain.write_text("\n".join(_sentence(rng, 12) for _ in range(3000)))
    packed = _compress(plain, suffix)
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        _texts([str(packed)])
    assert str(packed) in str(info.value)
    garbage = tmp_path / f"garbage.txt{suffix}"
    garbage.write_bytes(b"this is not compressed at all\n" * 10)
    with pytest.raises(DataError, match="not a valid") as info:
        _texts([str(garbage)])
    assert str(garbage) in str(info.value)


def test_unknown_inner_suffix_and_empty_files_read_as_text(tmp_path: Path) -> None:
    notes = tmp_path / "notes.v2.gz"
    notes.write_bytes(gzip.compress(b"a compressed file of some other name\n"))
    assert _texts([str(notes)]) == ["a compressed file of some other name"]
    empty = _compress(_write(tmp_path / "empty.txt", ""), ".zst")
    assert _texts([str(tmp_path / "empty.txt"), str(empty)]) == []


def test_builtin_corpus_in_paragraphs() -> None:
    docs = list(itertools.islice(read_source("builtin:python-docs", ReadOptions("paragraph")), 500))
    whole = next(read_source("builtin:python-docs", ReadOptions()))
    first = [d for d in docs if d.source.rpartition(":")[0] == whole.source]
    assert len(first) > 1
    assert clean_text("\n\n".join(d.text for d in first)) == clean_text(whole.text)


def test_invalid_utf8_in_a_compressed_file_names_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(gzip.compress(b"fine\nfine again\nbad \xff byte\n"))
    with pytest.raises(DataError, match=r"byte offset 20 \(line 3\)"):
        _texts([str(path)])


def test_missing_zstandard_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _compress(_write(tmp_path / "a.txt", "some text to compress\n"), ".zst")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(DataError, match=r"needs zstandard: pip install 'lmforge\[data\]'"):
        _texts([str(path)])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- JSONL fields


def test_text_column_and_dotted_path_read_jsonl_fields(tmp_path: Path) -> None:
    records = _records()
    path = tmp_path / "nested.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _texts([str(path)]) == [clean_text(r["text"]) for r in records]
    assert _texts([str(path)], text_column="meta.body") == [r["meta"]["body"] for r in records]
    literal = tmp_path / "literal.jsonl"  # a key that itself holds a dot wins
    literal.write_text(json.dumps({"meta.body": "the literal dotted key", "meta": {}}) + "\n")
    assert _texts([str(literal)], text_column="meta.body") == ["the literal dotted key"]


@pytest.mark.parametrize(
    ("column", "record", "needles"),
    [
        ("body", {"id": 1, "text": "x", "meta": {}}, ["no field 'body'", "id, text, meta"]),
        ("meta.title", {"meta": {"body": "b", "n": 1}}, ["in 'meta': body, n"]),
        ("meta.body.x", {"meta": {"body": "b"}}, ["'meta.body' is a string"]),
        ("meta", {"meta": {"body": "b"}}, ["'meta' is an object, expected a string"]),
    ],
)
def test_wrong_jsonl_field_names_line_and_the_fields_found(
    tmp_path: Path, column: str, record: dict, needles: list[str]
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as info:
        _texts([str(path)], text_column=column)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")
    for needle in needles:
        assert needle in message


# ---------------------------------------------------------------- tables and datasets


def _jsonl(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _parquet(tmp_path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "records.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
    return path


def _arrow_file(tmp_path: Path, records: list[dict]) -> Path:
    import pyarrow as pa

    table = pa.Table.from_pylist(records)
    path = tmp_path / "records.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    return path


def _arrow_stream(tmp_path: Path, records: list[dict]) -> Path:
    import pyarrow as pa

    table = pa.Table.from_pylist(records)
    path = tmp_path / "stream" / "records.arrow"
    path.parent.mkdir()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=11):
            writer.write_batch(batch)
    return path


def _csv(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "records.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # a BOM, as Excel writes
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([r["id"], r["text"]] for r in records)  # quoted, spanning lines
    return path


def _saved_dataset(tmp_path: Path, records: list[dict]) -> Path:
    import datasets

    path = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


TABLES: dict[str, Callable[[Path, list[dict]], Path]] = {
    "parquet": _parquet,
    "arrow file": _arrow_file,
    "arrow stream": _arrow_stream,
    "csv": _csv,
    "saved dataset": _saved_dataset,
}


@pytest.mark.parametrize("kind", list(TABLES))
def test_tables_and_datasets_give_the_jsonl_documents(tmp_path: Path, kind: str) -> None:
    records = _records()
    expected = _texts([str(_jsonl(tmp_path, records))])
    path = TABLES[kind](tmp_path, records)
    docs = list(stream_corpus([str(path)], documents="line")[0])  # a row stays one document
    assert [d.text for d in docs] == expected
    assert len(expected) == len(records)
    if kind == "csv":  # named by the line each record starts on (a header, then 2 lines each)
        assert [d.source for d in docs] == [f"{path}:{2 + 2 * i}" for i in range(len(records))]
    else:  # named by row, from 0
        assert [d.source for d in docs] == [f"{path}:{i}" for i in range(len(records))]


@pytest.mark.parametrize("kind", ["parquet", "arrow file", "saved dataset"])
def test_dotted_column_reads_a_struct_field(tmp_path: Path, kind: str) -> None:
    records = _records()
    path = TABLES[kind](tmp_path, records)
    assert _texts([str(path)], text_column="meta.body") == [r["meta"]["body"] for r in records]


@pytest.mark.parametrize("kind", [*TABLES, "jsonl", "tsv"])
def test_wrong_text_column_lists_the_columns(tmp_path: Path, kind: str) -> None:
    records = [{"id": 1, "review": "a review long enough to keep"}]
    if kind == "jsonl":
        path, found = _jsonl(tmp_path, records), "fields found: id, review"
    elif kind == "tsv":
        path, found = _write(tmp_path / "r.tsv", "id\treview\n1\tsome review\n"), "id, review"
    elif kind == "csv":
        path = _write(tmp_path / "r.csv", "id,review\n1,some review\n")
        found = "columns found: id, review"
    else:
        path, found = TABLES[kind](tmp_path, records), "columns found: id, review"
    with pytest.raises(DataError, match=r"no (column|field) 'body'") as info:
        _texts([str(path)], text_column="body")
    assert found in str(info.value)
    assert str(path) in str(info.value)


def test_null_or_non_text_values_name_the_row(tmp_path: Path) -> None:
    records = [{"text": "a fine first row of text"}, {"text": None}]
    with pytest.raises(DataError, match=r"row 1: column 'text' holds null, not text"):
        _texts([str(_parquet(tmp_path, records))])
    numbers = _arrow_file(tmp_path, [{"text": "fine row"}, {"text": "x"}, {"text": "y"}])
    assert len(_texts([str(numbers)], min_chars=1)) == 3


def test_tsv_keeps_quotes_and_csv_rows_name_their_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.tsv", 'label\ttext\n1\tHe said "hi" and left, quietly.\n\n')
    assert _texts([str(path)]) == ['He said "hi" and left, quietly.']
    bad = _write(tmp_path / "bad.csv", "id,text\n1,fine row of text\n2,too,many\n")
    with pytest.raises(DataError, match=r"bad.csv:3: 3 fields where the header has 2"):
        _texts([str(bad)])


def test_csv_field_longer_than_the_csv_module_default(tmp_path: Path) -> None:
    long = "word " * 40_000  # 200K characters: over csv's 128K default field limit
    path = tmp_path / "long.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["text"], [long]])
    assert _texts([str(path)]) == [long.strip()]


def test_saved_dataset_dict_reads_train_unless_a_split_is_named(tmp_path: Path) -> None:
    import datasets

    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a training row of text"] * 1}),
            "test": datasets.Dataset.from_dict({"text": ["a test row of text here"]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    assert _texts([str(tmp_path / "dd")]) == ["a training row of text"]
    assert _texts([str(tmp_path / "dd" / "test")]) == ["a test row of text here"]


def test_directory_search_takes_every_known_format(tmp_path: Path) -> None:
    records = _records(5)
    root = tmp_path / "corpus"
    (root / "deep").mkdir(parents=True)
    _write(root / "a.txt", "a plain text file at the top\n")
    _compress(_write(root / "deep" / "b.jsonl", json.dumps({"text": "compressed jsonl"})), ".gz")
    (root / "deep" / "b.jsonl").unlink()
    _parquet(root, records)
    _saved_dataset(root / "deep", _records(5, seed=2))
    _write(root / "skip.py", "print('not a corpus')\n")
    _write(root / "deep" / "skip.parquet.gz", "a compressed parquet is not searched\n")
    sources = resolve_inputs([str(root)])
    assert [Path(s).relative_to(root).as_posix() for s in sources] == [
        "a.txt",
        "deep/b.jsonl.gz",
        "deep/saved",
        "records.parquet",
    ]
    assert len(_texts([str(root)])) == 2 + 2 * len(records)


def test_compressed_parquet_given_by_name_is_refused(tmp_path: Path) -> None:
    path = _compress(_parquet(tmp_path, _records(3)), ".gz")
    with pytest.raises(DataError, match="decompress it"):
        _texts([str(path)])


def test_missing_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet(tmp_path, _records(3))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'lmforge\[data\]'"):
        _texts([str(path)])


# ---------------------------------------------------------------- hf: names (never downloaded)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """datasets.load_dataset replaced by a local one that records its calls."""
    import datasets

    calls: list[tuple] = []
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(_records(8)),
            "validation": datasets.Dataset.from_list(_records(3, seed=9)),
        }
    )

    def load_dataset(name: str, config: str | None = None, split: str | None = None):
        calls.append((name, config, split))
        if name != "org/reviews":
            raise FileNotFoundError(f"Dataset {name!r} doesn't exist on the Hub")
        return data if split is None else data[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hf_names_load_through_datasets(fake_hub: list[tuple]) -> None:
    assert len(_texts(["hf:org/reviews"])) == 8
    assert _texts(["hf:org/reviews::validation"], text_column="meta.body") == [
        r["meta"]["body"] for r in _records(3, seed=9)
    ]
    documents, report = stream_corpus(["hf:org/reviews:default:train"])
    assert [d.source for d in documents][:2] == [
        "hf:org/reviews:default:train:0",
        "hf:org/reviews:default:train:1",
    ]
    assert report.sources == 1
    assert fake_hub == [
        ("org/reviews", None, None),
        ("org/reviews", None, "validation"),
        ("org/reviews", "default", "train"),
    ]


def test_hf_errors_say_what_is_wrong(fake_hub: list[tuple]) -> None:
    with pytest.raises(DataError, match="hf:NAME"):
        resolve_inputs(["hf:a:b:c:d"])
    with pytest.raises(DataError, match=r"cannot load dataset 'org/none'.*doesn't exist"):
        _texts(["hf:org/none"])
    with pytest.raises(DataError, match="no column 'body'; columns found: id, text, meta"):
        _texts(["hf:org/reviews"], text_column="body")


def test_prepare_reads_an_hf_dataset_column(tmp_path: Path, fake_hub: list[tuple]) -> None:
    from lmforge.jobs.prepare import PrepareOptions, prepare

    out = tmp_path / "data"
    meta = prepare(
        PrepareOptions(
            inputs=["hf:org/reviews"],
            out=out,
            tokenizer="char",
            text_column="meta.body",
            val_fraction=0.25,
        )
    )
    assert meta["report"]["documents_out"] == 8
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 8


# ---------------------------------------------------------------- the command line


def _lmforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_wrong_text_column_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [{"id": 1, "review": "a review long enough to keep"}])
    done = _lmforge(
        "prepare", "--input", str(path), "--out", str(tmp_path / "d"), "--text-column", "body"
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path}:1: no field 'body'; fields found: id, review")
    assert not (tmp_path / "d").exists()


def test_cli_documents_paragraph(tmp_path: Path) -> None:
    path = _write(tmp_path / "reviews.txt", "\n\n".join(_reviews(50)) + "\n")
    out = tmp_path / "d"
    done = _lmforge(
        "prepare", "--input", str(path), "--out", str(out), "--tokenizer", "char",
        "--documents", "paragraph",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    splits = json.loads((out / "meta.json").read_text())["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 50
    assert "(45 docs)" in done.stdout


def test_unknown_documents_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--documents must be one of chunk, paragraph, line"):
        stream_corpus([str(_write(tmp_path / "a.txt", "text"))], documents="sentence")
    assert text_stream.DOCUMENT_MODES == ("chunk", "paragraph", "line")
