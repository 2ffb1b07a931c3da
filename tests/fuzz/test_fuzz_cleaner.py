"""Fuzzing clean_text (data/corpus.py): it never raises, and what its docstring promises holds
for any string: one line-end convention, no control characters or odd spaces, no trailing
blanks on a line, no run of more than two line breaks, no line break at either end."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data.corpus import clean_text

from .profiles import fuzz_settings, timeout_s

pytestmark = pytest.mark.timeout(timeout_s())

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
tricky = st.sampled_from(
    [
        "\r\n",
        "\r",
        "\n",
        " ",
        "\t",
        "\x00",
        "\x85",
        "\u00a0",
        "\u3000",
        "e\u0301",
        "\u0301",
        "\ufeff",
        "\u2028",
        "深",
        "\U0001f600",
        "\x7f",
    ]
)
texts = st.text() | st.lists(tricky | st.text(max_size=3), max_size=40).map("".join)


@fuzz_settings(ci_examples=400)
@given(text=texts)
def test_clean_text_keeps_its_promises(text: str) -> None:
    cleaned = clean_text(text)
    assert "\r" not in cleaned
    assert not CONTROL.search(cleaned)
    assert not ODD_SPACES.search(cleaned)
    assert "\n\n\n" not in cleaned
    assert not cleaned.startswith("\n")
    assert not cleaned.endswith("\n")
    assert all(line == line.rstrip(" \t") for line in cleaned.split("\n"))


@fuzz_settings(ci_examples=400)
@given(text=texts)
def test_clean_text_is_idempotent(text: str) -> None:
    """Cleaning twice changes nothing more: prepare may clean text that was cleaned before."""
    once = clean_text(text)
    assert clean_text(once) == once


# ---------------------------------------------------------------- regressions the fuzzer found


def test_a_control_character_between_a_letter_and_its_accent_is_cleaned_in_one_pass() -> None:
    """Found by the fuzzer: NFC ran before the control character was dropped, so 'A', U+001F,
    U+0300 came out decomposed and a second clean_text composed it to 'À'."""
    assert clean_text("A\x1f\u0300") == "\u00c0"
