"""Corpus reading: cleaning, dedup, input resolution, JSONL, encoding errors and long files."""

import json
from pathlib import Path

import pytest

from lmforge.data import corpus
from lmforge.data.corpus import (
    CorpusReport,
    Document,
    clean_documents,
    clean_text,
    resolve_inputs,
    stream_corpus,
)
from lmforge.errors import DataError


def _texts(inputs: list[str], **kwargs) -> list[str]:
    documents, _ = stream_corpus(inputs, **kwargs)
    return [d.text for d in documents]


# ---------------------------------------------------------------- clean_text


def test_clean_text_composes_to_nfc() -> None:
    decomposed = "Cafe\u0301 n\u0303"  # e + combining acute, n + combining tilde
    assert clean_text(decomposed) == "Caf\u00e9 \u00f1"


def test_clean_text_removes_control_chars_but_keeps_newline_and_tab() -> None:
    raw = "a\x00b\x07c\x1bd\x7fe\x85f\tg\nh\x0bi\x0cj"
    assert clean_text(raw) == "abcdef\tg\nhij"


@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_clean_text_normalises_line_ends(line_end: str) -> None:
    assert clean_text(f"one{line_end}two{line_end}three") == "one\ntwo\nthree"


def test_clean_text_turns_odd_spaces_into_plain_spaces() -> None:
    assert clean_text("a\u00a0b\u2009c\u3000d\u202fe") == "a b c d e"


def test_clean_text_strips_trailing_spaces_only() -> None:
    assert clean_text("  keep leading  \nx \t\n\tindent\t ") == "  keep leading\nx\n\tindent"


def test_clean_text_collapses_three_or_more_blank_lines() -> None:
    raw = "a\n\nb\n\n\nc\n\n\n\n\n\nd\n  \n \t\n\ne"
    assert clean_text(raw) == "a\n\nb\n\nc\n\nd\n\ne"


def test_clean_text_trims_leading_and_trailing_newlines() -> None:
    assert clean_text("\n\n\nbody\n\n\n") == "body"


def test_clean_text_is_idempotent() -> None:
    raw = "x\u00a0\r\n\r\n\r\n\r\ny e\u0301 \x01\t\n"
    once = clean_text(raw)
    assert clean_text(once) == once


# ---------------------------------------------------------------- dedup and length filter


def test_exact_duplicates_are_dropped_and_counted() -> None:
    report = CorpusReport()
    docs = [
        Document("first document, long enough", "a"),
        Document("second document, long enough", "b"),
        Document("first document, long enough", "c"),
        Document("first document, long enough  \r\n", "d"),  # equal after cleaning
    ]
    out = list(clean_documents(docs, report, min_chars=4))
    assert [d.source for d in out] == ["a", "b"]
    assert report.duplicates == 2
    assert report.documents_in == 4
    assert report.documents_out == 2
    assert report.chars_out == sum(len(d.text) for d in out)
    assert report.sources == 4


def test_min_chars_filter_is_counted() -> None:
    report = CorpusReport()
    docs = [Document("tiny", "a"), Document("x" * 20, "b"), Document("  short \n\n\n", "c")]
    out = list(clean_documents(docs, report, min_chars=10))
    assert [d.text for d in out] == ["x" * 20]
    assert report.too_short == 2
    assert report.duplicates == 0
    assert "2 too short" in report.summary()


def test_min_chars_applies_to_cleaned_text(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc" + " " * 40 + "\n\n\n\n")
    documents, report = stream_corpus([str(tmp_path / "a.txt")], min_chars=4)
    assert list(documents) == []
    assert report.too_short == 1


def test_report_counts_sources_and_characters(corpus_dir: Path) -> None:
    documents, report = stream_corpus([str(corpus_dir)])
    texts = [d.text for d in documents]
    assert report.sources == 40
    assert report.documents_in == report.documents_out == len(texts) == 40
    assert report.chars_out == sum(map(len, texts))
    assert report.chars_in >= report.chars_out
    assert report.to_dict()["documents_out"] == 40


# ---------------------------------------------------------------- inputs


def test_directory_recursion_and_suffix_filter(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("text file at the top level")
    (tmp_path / "sub" / "a.md").write_text("markdown file one level down")
    (tmp_path / "sub" / "deeper" / "c.rst").write_text("restructured text two levels down")
    (tmp_path / "sub" / "skip.py").write_text("print('not a text suffix')")
    (tmp_path / "sub" / "skip.bin").write_bytes(b"\x00\x01")
    files = resolve_inputs([str(tmp_path)])
    assert [Path(f).relative_to(tmp_path).as_posix() for f in files] == [
        "b.txt",
        "sub/a.md",
        "sub/deeper/c.rst",
    ]
    assert sorted(_texts([str(tmp_path)])) == [
        "markdown file one level down",
        "restructured text two levels down",
        "text file at the top level",
    ]


def test_glob_pattern(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.md").write_text("first markdown document")
    (tmp_path / "two.md").write_text("second markdown document")
    (tmp_path / "three.txt").write_text("a text file the glob must not match")
    files = resolve_inputs([str(tmp_path / "**" / "*.md")])
    assert sorted(Path(f).name for f in files) == ["one.md", "two.md"]


def test_directory_without_text_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1")
    with pytest.raises(DataError, match="holds no"):
        resolve_inputs([str(tmp_path)])


def test_missing_path_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_file.txt"
    with pytest.raises(DataError, match="input not found") as info:
        stream_corpus([str(missing)])  # fails before any document is read
    assert str(missing) in str(info.value)


def test_unknown_builtin_is_an_error() -> None:
    with pytest.raises(DataError, match="builtin:python-docs"):
        resolve_inputs(["builtin:nope"])


def test_no_inputs_is_an_error() -> None:
    with pytest.raises(DataError, match="no input"):
        resolve_inputs([])


def test_jsonl_text_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    records = [{"text": "first jsonl document", "id": 1}, {"text": "second\njsonl document"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    documents, report = stream_corpus([str(path)])
    docs = list(documents)
    assert [d.text for d in docs] == ["first jsonl document", "second\njsonl document"]
    assert [d.source for d in docs] == [f"{path}:1", f"{path}:2"]
    assert report.documents_out == 2


def test_jsonl_lines_of_one_file_count_as_one_source(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first jsonl document"}\n{"text": "second jsonl document"}\n')
    documents, report = stream_corpus([str(path)])
    assert len(list(documents)) == 2
    assert report.sources == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "a fine first line"}', "{not json"], "not valid JSON"),
        (['{"text": "a fine first line"}', "", '{"body": "no text"}'], "no field 'text'"),
        (['{"text": "a fine first line"}', '["a", "list"]'], "string 'text' field, got a list"),
        (['{"text": "a fine first line"}', '{"text": 42}'], "'text' is a number, expected"),
    ],
)
def test_bad_jsonl_line_reports_file_and_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as info:
        _texts([str(path)])
    assert f"{path}:{len(lines)}:" in str(info.value)


# ---------------------------------------------------------------- bytes and encodings


def test_binary_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "image.txt"
    path.write_bytes(b"GIF89a\x01\x00\x00\x00rest")
    with pytest.raises(DataError, match="binary") as info:
        _texts([str(path)])
    assert str(path) in str(info.value)
    assert "NUL byte at offset 7" in str(info.value)


def test_invalid_utf8_names_file_and_exact_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    good = "first line is fine\nsecond: caf\u00e9 na\u00efve "  # multi-byte chars before the error
    bad = "r\u00e9sum\u00e9 again\n".encode("latin-1")  # \xe9 is invalid on its own in UTF-8
    path.write_bytes(good.encode("utf-8") + bad)
    offset = len(good.encode("utf-8")) + 1  # 'r' is fine, the byte after it is not
    with pytest.raises(DataError, match="invalid UTF-8") as info:
        _texts([str(path)])
    message = str(info.value)
    assert str(path) in message
    assert f"byte offset {offset} " in message
    assert "line 2" in message


def test_replace_encoding_errors_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"valid text, then \xff\xfe bad bytes, then more text\n")
    assert _texts([str(path)], encoding_errors="replace") == [
        "valid text, then \ufffd\ufffd bad bytes, then more text"
    ]
    assert _texts([str(path)], encoding_errors="ignore") == [
        "valid text, then  bad bytes, then more text"
    ]


def test_unknown_encoding_errors_mode_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text here")
    with pytest.raises(DataError, match="--encoding-errors"):
        stream_corpus([str(tmp_path / "a.txt")], encoding_errors="backslashreplace")


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffstarts with a byte order mark".encode())
    assert _texts([str(path)]) == ["starts with a byte order mark"]


# ---------------------------------------------------------------- long files


def test_long_file_is_cut_into_continued_chunks(tmp_path: Path) -> None:
    paragraphs = [
        "".join(f"Paragraph {p}, sentence {s}: some filler words here.\n" for s in range(5))
        for p in range(int(corpus.CHUNK_CHARS * 3.5) // 250)
    ]
    text = "\n".join(paragraphs)
    assert len(text) > 3 * corpus.CHUNK_CHARS
    path = tmp_path / "long.txt"
    path.write_text(text)
    docs = list(stream_corpus([str(path)])[0])
    assert len(docs) == 4
    assert [d.continued for d in docs] == [False, True, True, True]
    assert {d.source for d in docs} == {str(path)}
    for doc in docs[:-1]:  # cut at the last paragraph break within CHUNK_CHARS characters
        assert corpus.CHUNK_CHARS - 300 < len(doc.text) <= corpus.CHUNK_CHARS
        assert doc.text.endswith("filler words here.")
    for doc in docs[1:]:
        assert doc.text.startswith("Paragraph ")
    # Nothing is lost or reordered: the chunks joined at the blank line give back the file.
    assert "\n\n".join(d.text for d in docs) == clean_text(text)


def test_file_below_chunk_size_is_one_document(tmp_path: Path) -> None:
    text = ("line of text\n\n" * (corpus.CHUNK_CHARS // 14 - 10)).strip("\n")
    assert len(text) < corpus.CHUNK_CHARS
    (tmp_path / "a.txt").write_text(text)
    docs = list(stream_corpus([str(tmp_path / "a.txt")])[0])
    assert len(docs) == 1
    assert docs[0].continued is False


# ---------------------------------------------------------------- built-in corpus


def test_builtin_python_docs_yields_megabytes_of_text() -> None:
    documents, report = stream_corpus(["builtin:python-docs"])
    chars = 0
    sources = set()
    for doc in documents:
        chars += len(doc.text)
        sources.add(doc.source)
        assert "\r" not in doc.text
    assert chars >= 1_000_000
    assert report.chars_out == chars
    assert len(sources) > 100
    assert any("/topics/" in s for s in sources)
    assert any("/stdlib/" in s for s in sources)


def _reviews(tmp_path: Path) -> Path:
    """60 distinct reviews of 120 words, 20 copied again with one word changed (near-duplicates)."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    originals = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(60)]
    copies = [text.replace(text.split()[60], "changed", 1) for text in originals[:20]]  # J ~ 0.92
    path = tmp_path / "reviews.txt"
    path.write_text("\n\n".join(originals + copies), encoding="utf-8")
    return path


def test_prepare_near_dedup_drops_the_planted_copies_and_writes_a_sample(tmp_path: Path) -> None:
    import json

    from lmforge.jobs.prepare import PrepareOptions, prepare

    corpus = _reviews(tmp_path)
    common = {"inputs": [str(corpus)], "tokenizer": "char", "documents": "paragraph"}
    plain = prepare(PrepareOptions(out=tmp_path / "plain", **common))
    deduped = prepare(PrepareOptions(out=tmp_path / "dedup", near_dedup=0.8, **common))
    assert plain["report"]["documents_out"] == 80
    assert plain["report"]["near_duplicates"] == 0
    assert deduped["report"]["near_duplicates"] == 20
    assert deduped["report"]["documents_out"] == 60
    sample = (tmp_path / "dedup" / "near_duplicates.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in sample.splitlines()]
    assert len(records) == 5
    assert all(r["similarity"] >= 0.8 and r["similar_to"] < r["position"] for r in records)


def test_prepare_normalize_nfkc_is_stored_in_the_tokenizer(tmp_path: Path) -> None:
    from lmforge.jobs.prepare import PrepareOptions, prepare
    from lmforge.tokenizer import Tokenizer

    text = tmp_path / "wide.txt"
    text.write_text("Full-width ＡＢＣ１２３ and plain ABC123 text. " * 20, encoding="utf-8")
    prepare(
        PrepareOptions(
            inputs=[str(text)],
            out=tmp_path / "d",
            tokenizer="bpe",
            vocab_size=300,
            normalize="nfkc",
        )
    )
    tokenizer = Tokenizer.load(tmp_path / "d" / "tokenizer.json")
    assert tokenizer.encode("ＡＢＣ１２３") == tokenizer.encode("ABC123")
    with pytest.raises(DataError, match="--normalize"):
        prepare(
            PrepareOptions(
                inputs=[str(text)],
                out=tmp_path / "e",
                normalize="nfkc",
                tokenizer_file=tmp_path / "d" / "tokenizer.json",
            )
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda i: f"line {i}: a short line of text without blank lines\n",  # cut at line breaks
        lambda i: f"Sentence number {i} ends here. ",  # one long line: cut at sentence ends
        lambda i: f"x{i % 10}",  # no space at all: hard cuts mid-word
    ],
)
def test_continued_pieces_rejoin_into_the_cleaned_text(tmp_path: Path, make) -> None:
    """The shard writer joins a continued piece with its joiner: the text comes back whole,
    with no blank line put where a line break, a space or nothing stood."""
    text = "".join(make(i) for i in range(40_000))
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    documents, _ = stream_corpus([str(path)], chunk_chars=20_000)
    pieces = list(documents)
    assert len(pieces) > 3
    assert all(p.continued for p in pieces[1:])
    rejoined = pieces[0].text + "".join(p.joiner + p.text for p in pieces[1:])
    assert rejoined == corpus.clean_text(text)


def test_fix_text_repairs_mojibake_and_leaves_the_rest_alone(tmp_path: Path) -> None:
    """UTF-8 read as Latin-1 (café -> cafÃ©) is repaired; curly quotes, full-width
    forms and ligatures that were right stay as they are."""
    right = "Un café “bien” servi, ＡＢＣ and the ﬁle, 他说：“很好。”"
    broken = right.encode("utf-8").decode("latin-1")
    (tmp_path / "a.txt").write_text(f"{broken}\n\n{right}\n", encoding="utf-8")
    texts = lambda **kw: [d.text for d in stream_corpus([str(tmp_path / "a.txt")], **kw)[0]]  # noqa: E731
    assert texts(documents="paragraph") != [right, right]  # the switch does something
    # repaired, the broken copy is exactly the right one, so exact dedup keeps one of them
    assert texts(documents="paragraph", fix_text=True) == [right]
