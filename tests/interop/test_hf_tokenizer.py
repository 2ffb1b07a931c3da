"""GPT-2 tokenizers rebuilt from vocab.json + merges.txt: merges apply in the file's rank order.

A trained vocabulary rarely shows the order (its words merge to whole tokens either way), so
this builds one where it decides: with `b c` ranked before `a b`, "abc" is a + bc, not ab + c.
"""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmforge.interop.hf_tokenizer import import_tokenizer
from lmforge.tokenizer import EOT

VOCAB = {"a": 0, "b": 1, "c": 2, "d": 3, "Ġ": 4, "bc": 5, "ab": 6, "cd": 7, "abc": 8, EOT: 9}
MERGES = ["b c", "a b", "c d", "ab c"]  # rank order: b c first


def _write(directory: Path, merges: list[str]) -> Path:
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(VOCAB), encoding="utf-8")
    lines = ["#version: 0.2", *merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("text", "pieces"),
    [("abc", ["a", "bc"]), ("abcd", ["a", "bc", "d"]), ("cd", ["cd"]), ("ab", ["ab"])],
)
def test_merges_apply_in_rank_order(tmp_path: Path, text: str, pieces: list[str]) -> None:
    directory = _write(tmp_path / "hf", MERGES)
    tokenizer = import_tokenizer(directory, "gpt2")
    assert tokenizer.encode(text) == [VOCAB[p] for p in pieces]
    # the tokenizers library's own reader of the two files agrees
    files = (str(directory / "vocab.json"), str(directory / "merges.txt"))
    reference = HFTokenizer(models.BPE.from_file(*files))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert tokenizer.encode(text) == reference.encode(text).ids
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_another_rank_order_gives_other_pieces(tmp_path: Path) -> None:
    """Not vacuous: the same merges ranked `a b` first make "abc" one token via ab + c."""
    tokenizer = import_tokenizer(_write(tmp_path / "hf", sorted(MERGES)), "gpt2")
    assert tokenizer.encode("abc") == [VOCAB["abc"]]
    assert tokenizer.eot_id == VOCAB[EOT]
