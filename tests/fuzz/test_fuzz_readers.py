"""Fuzzing the readers of user files: corpus JSONL/CSV/TSV (data/readers.py), labelled
classification rows (data/classify.py), SFT and chat JSONL rows (data/sft.py, data/chat.py).
Each returns what it read or raises an LMForgeError with a message, whatever the bytes."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.data.classify import read_examples
from lmforge.data.readers import ReadOptions, read_source
from lmforge.data.sft import read_pairs
from lmforge.errors import DataError

from .profiles import fuzz_settings, timeout_s, user_error_or_result

pytestmark = pytest.mark.timeout(timeout_s())

COLUMNS = ["text", "label", "sentence", "premise", "prompt", "completion", "messages", ""]
ROLES = ["system", "user", "assistant", "tool", ""]
HUGE_NUMBER = "9" * 5000  # over Python's 4300-digit limit on int(str)

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["pos", "neg", "0", "1", " ", ""])
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES)}, optional={"content": st.text(max_size=12) | leaves}
    ),
    max_size=4,
)
records = st.one_of(
    st.dictionaries(st.sampled_from(COLUMNS), json_values, max_size=4),
    st.fixed_dictionaries({"prompt": leaves, "completion": leaves}),
    st.fixed_dictionaries({"messages": messages | json_values}),
    json_values,
)
garbage_lines = st.sampled_from(
    [
        "{",
        "[" * 3000 + "]" * 3000,  # deeper than json's recursion limit
        f'{{"text": {HUGE_NUMBER}, "label": {HUGE_NUMBER}}}',
        f'{{"prompt": "a", "completion": "b", "n": {HUGE_NUMBER}}}',
        "NaN",
        '{"text": "\\ud800"}',  # a lone surrogate
        "\ufeff{}",
        "\x00",
    ]
)
jsonl_lines = (
    records.map(lambda r: json.dumps(r, allow_nan=True)) | garbage_lines | st.text(max_size=20)
)
jsonl_text = st.lists(jsonl_lines, max_size=5).map("\n".join)
table_cell = st.text(max_size=8) | st.sampled_from(
    ['"', '""', '"a,b"', "\t", "\r", "text", HUGE_NUMBER]
)


def _table(rows: list[list[str]], sep: str, header: list[str]) -> str:
    return "\n".join(sep.join(row) for row in [header, *rows])


file_bytes = st.one_of(
    jsonl_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=100),
    st.sampled_from([b"\xff\xfe", b"text\n\x80\x81", b"\xef\xbb\xbftext\nhello\n"]),
)


def _tables(sep: str) -> st.SearchStrategy[bytes]:
    headers = st.lists(st.sampled_from(COLUMNS) | st.text(max_size=5), max_size=4)
    return st.builds(
        _table, st.lists(st.lists(table_cell, max_size=4), max_size=5), st.just(sep), headers
    ).map(lambda t: t.encode("utf-8", "surrogatepass"))


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@fuzz_settings(ci_examples=120)
@given(
    kind=st.sampled_from(["jsonl", "csv", "tsv"]),
    content=st.data(),
    column=st.sampled_from(COLUMNS) | st.text(max_size=6),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_corpus_readers(tmp_path: Path, kind: str, content, column: str, errors: str) -> None:
    body = {
        "jsonl": jsonl_text.map(lambda t: t.encode("utf-8", "surrogatepass")) | file_bytes,
        "csv": _tables(",") | file_bytes,
        "tsv": _tables("\t") | file_bytes,
    }[kind]
    path = _file(tmp_path, f"in.{kind}", content.draw(body))
    options = ReadOptions(text_column=column, encoding_errors=errors)
    result = user_error_or_result(lambda: list(read_source(str(path), options)))
    if isinstance(result, list):
        assert all(isinstance(doc.text, str) for doc in result)


@fuzz_settings(ci_examples=120)
@given(
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]),
    content=st.data(),
    pair=st.sampled_from([None, "premise", "sentence"]),
)
def test_classification_rows(tmp_path: Path, suffix: str, content, pair: str | None) -> None:
    body = _tables("\t" if suffix == ".tsv" else ",") | file_bytes
    path = _file(tmp_path, f"train{suffix}", content.draw(body))
    result = user_error_or_result(lambda: read_examples(path, "text", "label", pair_column=pair))
    if isinstance(result, list):
        assert all(isinstance(e.text, str) and isinstance(e.label, str) for e in result)


@fuzz_settings(ci_examples=120)
@given(content=file_bytes, skip=st.booleans(), chat=st.booleans())
def test_sft_and_chat_rows(tmp_path: Path, content: bytes, skip: bool, chat: bool) -> None:
    path = _file(tmp_path, "sft.jsonl", content)
    template = ChatTemplate(DEFAULT_TEMPLATE, eos_token="<|endoftext|>") if chat else None
    result = user_error_or_result(lambda: read_pairs(path, skip, template))
    if isinstance(result, list):
        assert all(isinstance(p.prompt, str) and isinstance(p.completion, str) for p in result)


template_pieces = st.sampled_from(
    [
        "{{ messages[0]['content'] }}",
        "{% for m in messages %}{{ m.role }}{% endfor %}",
        "{{ raise_exception('no') }}",
        "{% if add_generation_prompt %}<|assistant|>{% endif %}",
        "{{ eos_token }}",
        "{{ messages | tojson }}",
        "{{ undefined.attr }}",
        "{% for i in range(10 ** 9) %}{% endfor %}",
        "{{ ''.__class__ }}",
        "{%",
        "}}",
        "{{ 1 / 0 }}",
        "{{ messages[99] }}",
        "text",
    ]
)


@fuzz_settings(ci_examples=100)
@given(source=st.lists(template_pieces, max_size=4).map("".join), turns=messages)
def test_chat_templates_render_or_refuse(source: str, turns: list[dict]) -> None:
    template = ChatTemplate(source, eos_token="</s>")
    user_error_or_result(lambda: template.segments(turns))
    user_error_or_result(lambda: template.render(turns, add_generation_prompt=True))


# ---------------------------------------------------------------- regressions the fuzzer found


@pytest.mark.parametrize(
    "line", [f'{{"text": {HUGE_NUMBER}}}', "[" * 3000 + "]" * 3000], ids=["huge-int", "deep"]
)
def test_unusable_json_lines_are_data_errors(tmp_path: Path, line: str) -> None:
    """json.loads raises ValueError (int over 4300 digits) or RecursionError on these."""
    corpus = _file(tmp_path, "corpus.jsonl", line.encode())
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: not usable JSON"):
        list(read_source(str(corpus), ReadOptions()))
    labelled = _file(tmp_path, "train.jsonl", line.encode())
    with pytest.raises(DataError, match=r"train\.jsonl:1: not usable JSON"):
        read_examples(labelled, "text", "label")
    pairs = _file(tmp_path, "sft.jsonl", line.encode())
    with pytest.raises(DataError, match="not usable JSON"):
        read_pairs(pairs)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_labelled_file_that_is_not_utf8_is_a_data_error(tmp_path: Path, suffix: str) -> None:
    path = _file(tmp_path, f"train{suffix}", b"\x80")
    with pytest.raises(DataError, match="not UTF-8"):
        read_examples(path, "text", "label")


def test_a_chat_template_that_divides_by_zero_is_a_data_error() -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(DataError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 / 0 }}").render(chat, add_generation_prompt=True)


def test_raise_exception_in_a_template_keeps_its_message() -> None:
    with pytest.raises(DataError, match="refused the conversation: no system"):
        ChatTemplate("{{ raise_exception('no system') }}").render([], False)
