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


def _sentencepiece_style(corpus: list[str]) -> HFTokenizer:
    """A Llama 2 / TinyLlama-style tokenizer.json: BPE over `▁`-marked words with byte fallback
    (<0x00> ... <0xFF> for what the vocabulary lacks), <unk> <s> </s> as specials."""
    from tokenizers import decoders, normalizers, trainers

    specials = ["<unk>", "<s>", "</s>"]
    backend = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials + byte_tokens)
    backend.train_from_iterator(corpus, trainer)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return backend


def test_a_sentencepiece_style_tokenizer_gives_transformers_ids(tmp_path: Path) -> None:
    """Byte fallback for the Chinese and emoji the vocabulary lacks; </s> ends a text."""
    from transformers import PreTrainedTokenizerFast

    from .twins import CORPUS, TORTURE

    backend = _sentencepiece_style(CORPUS)
    backend.save(str(tmp_path / "tok.json"))
    reference = PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tok.json"), eos_token="</s>", bos_token="<s>"
    )
    reference.save_pretrained(tmp_path / "hf")
    tokenizer = import_tokenizer(tmp_path / "hf", "llama")
    text = "Mixed text: 汉字和中文标点，emoji 🤖🚀 and English. " + TORTURE
    expected = reference.encode(text, add_special_tokens=False)
    assert tokenizer.encode(text) == expected
    assert any(reference.convert_ids_to_tokens(i).startswith("<0x") for i in expected)
    assert tokenizer.eot_id == reference.eos_token_id
    assert tokenizer.decode(expected) == reference.decode(expected)
