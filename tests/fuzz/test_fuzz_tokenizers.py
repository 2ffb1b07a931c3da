"""Fuzzing the tokenizers with their documented behaviour only: byte-level BPE decodes any
Unicode string back to itself (after its normalisation, if any); char maps what it saw to
itself and the rest to <|unk|>; WordPiece encodes any string to ids of its vocabulary."""

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.tokenizer import UNK, Tokenizer

from .profiles import fuzz_settings, timeout_s

pytestmark = pytest.mark.timeout(timeout_s())

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 深度学习 naïve café 😀",
    "def f(x):\n    return x * 2  # tabs\tand spaces",
] * 20
anything = st.text() | st.text(st.characters(codec="utf-8"), max_size=50)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def bpe_nfkc() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=300, normalize="nfkc")


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char(CORPUS)


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece(CORPUS, vocab_size=200)


@fuzz_settings(ci_examples=300)
@given(text=anything)
def test_byte_level_bpe_round_trips_any_string(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@fuzz_settings(ci_examples=150)
@given(text=anything)
def test_normalising_bpe_round_trips_to_the_normal_form(bpe_nfkc: Tokenizer, text: str) -> None:
    assert bpe_nfkc.decode(bpe_nfkc.encode(text)) == unicodedata.normalize("NFKC", text)


@fuzz_settings(ci_examples=200)
@given(text=anything)
def test_char_keeps_seen_characters_and_marks_the_rest_unknown(char: Tokenizer, text: str) -> None:
    seen = set(char.vocab())
    expected = [ch if ch in seen else UNK for ch in text]
    ids = char.encode(text)
    assert [char.decode([i]) for i in ids] == expected


@fuzz_settings(ci_examples=150)
@given(a=anything, b=anything)
def test_wordpiece_encodes_any_text_within_its_vocabulary(
    wordpiece: Tokenizer, a: str, b: str
) -> None:
    ids, types = wordpiece.encode_pair(a, b)
    assert all(0 <= i < wordpiece.vocab_size for i in ids)
    assert ids[0] == wordpiece.cls_id
    assert ids[-1] == wordpiece.sep_id
    first = types.index(1) if 1 in types else len(types)
    assert set(types[:first]) <= {0}
    assert set(types[first:]) <= {1}
    wordpiece.decode(ids)  # never raises


@fuzz_settings(ci_examples=150)
@given(data=st.data())
def test_decoding_any_valid_ids_never_raises(bpe: Tokenizer, char: Tokenizer, data) -> None:
    for tokenizer in (bpe, char):
        ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=30))
        assert isinstance(tokenizer.decode(ids, skip_special_tokens=data.draw(st.booleans())), str)
