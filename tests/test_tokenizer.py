"""Tokenizers: lossless byte-level BPE, char-level with <|unk|>, save/load, transformers parity."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.errors import DataError
from lmforge.tokenizer import EOT, UNK, Tokenizer

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.\n" * 20,
    "def main():\n    return sorted(items, key=len)\n" * 20,
    "Sphinx of black quartz, judge my vow. Pack my box with five dozen liquor jugs.\n" * 20,
]

# Emoji (ZWJ sequence, flags, skin tone), combining marks (NFD, stacked), CJK, RTL text and
# an RTL override, tabs, CR/LF, leading/trailing/multiple spaces, math letters, and the
# document separator spelled out in the middle of a text.
TORTURE = (
    "  leading spaces, then 👩‍👩‍👧‍👦 🇯🇵 👍🏽 ✨\n"
    "e\u0301 a\u0308\u0323 Z\u0351\u0358\u035e combining marks\t\ttabs\r\n"
    "漢字かなカナ한국어 — CJK, שָׁלוֹם עולם and مرحبا بالعالم \u202eevil\u202c\n"
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ: x²≥0 \u00a0nbsp\u200bzwsp \x00\x7f\n\n\n"
    "before<|endoftext|>after  trailing   "
)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(TRAINING_TEXT, vocab_size=320)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char(TRAINING_TEXT)


# ---------------------------------------------------------------- byte-level BPE


def test_bpe_round_trip_is_lossless_on_unicode_torture(bpe: Tokenizer) -> None:
    ids = bpe.encode(TORTURE)
    assert bpe.decode(ids) == TORTURE  # no normalisation, no stripping, nothing unknown
    assert all(0 <= i < bpe.vocab_size for i in ids)


@pytest.mark.parametrize("text", ["", " ", "\n", "\t\n \r\n", "é", "🙂", "a" * 1000])
def test_bpe_round_trip_edge_cases(bpe: Tokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges(bpe: Tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) // 2
    assert bpe.vocab_size <= 320
    assert bpe.kind == "bpe"


def test_literal_endoftext_becomes_the_special_token(bpe: Tokenizer) -> None:
    """Documented: the literal separator string in a text encodes to the one EOT id."""
    ids = bpe.encode("before<|endoftext|>after")
    assert ids.count(bpe.eot_id) == 1
    eot_at = ids.index(bpe.eot_id)
    assert bpe.decode(ids[:eot_at]) == "before"
    assert bpe.decode(ids[eot_at + 1 :]) == "after"
    assert bpe.decode(ids) == "before<|endoftext|>after"
    assert bpe.decode(ids, skip_special_tokens=True) == "beforeafter"
    # A near miss is ordinary text.
    assert bpe.eot_id not in bpe.encode("<|endoftext|")


def test_eot_id_exists_and_is_the_separator(bpe: Tokenizer, char: Tokenizer) -> None:
    for tok in (bpe, char):
        assert isinstance(tok.eot_id, int)
        assert 0 <= tok.eot_id < tok.vocab_size
        assert tok.backend.token_to_id(EOT) == tok.eot_id
        assert tok.encode(EOT) == [tok.eot_id]
        assert tok.decode([tok.eot_id]) == EOT


def test_encode_batch_equals_encode(bpe: Tokenizer) -> None:
    texts = [TORTURE, "", "plain text", TRAINING_TEXT[1]]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_vocab_too_small_for_bpe_raises(vocab_size: int) -> None:
    with pytest.raises(DataError, match=f"--vocab-size {vocab_size} is too small"):
        Tokenizer.train_bpe(TRAINING_TEXT, vocab_size=vocab_size)


def test_smallest_bpe_vocab_still_round_trips() -> None:
    tok = Tokenizer.train_bpe(TRAINING_TEXT, vocab_size=257)
    assert tok.vocab_size == 257  # 256 bytes + EOT, no merges
    assert tok.decode(tok.encode(TORTURE)) == TORTURE


# ---------------------------------------------------------------- save / load / transformers


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_gives_identical_ids_and_sha256(
    tmp_path: Path, bpe: Tokenizer, char: Tokenizer, kind: str
) -> None:
    tok = bpe if kind == "bpe" else char
    path = tmp_path / "nested" / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.sha256() == tok.sha256()
    assert loaded.encode(TORTURE) == tok.encode(TORTURE)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.eot_id == tok.eot_id
    assert loaded.kind == kind
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left


def test_sha256_tells_tokenizers_apart(bpe: Tokenizer, char: Tokenizer) -> None:
    other = Tokenizer.train_bpe(TRAINING_TEXT, vocab_size=300)
    assert len({bpe.sha256(), char.sha256(), other.sha256()}) == 3
    assert Tokenizer.train_bpe(TRAINING_TEXT, vocab_size=320).sha256() == bpe.sha256()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_transformers_fast_tokenizer_gives_identical_ids(
    tmp_path: Path, bpe: Tokenizer, char: Tokenizer, kind: str
) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = bpe if kind == "bpe" else char
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    texts = [TORTURE, TRAINING_TEXT[0], "unseen: ¿Qué? 🙂"]
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == tok.decode(ids)
    assert hf.convert_tokens_to_ids(EOT) == tok.eot_id


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not a tokenizer")
    with pytest.raises(DataError, match="cannot read tokenizer") as info:
        Tokenizer.load(bad)
    assert str(bad) in str(info.value)


def test_tokenizer_without_eot_is_rejected(tmp_path: Path) -> None:
    backend = HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(DataError, match="endoftext"):
        Tokenizer(backend)
    path = tmp_path / "no_eot.json"
    path.write_text(backend.to_str())
    with pytest.raises(DataError, match="endoftext"):
        Tokenizer.load(path)


# ---------------------------------------------------------------- char-level


def test_char_round_trip_on_seen_characters(char: Tokenizer) -> None:
    for text in TRAINING_TEXT:
        ids = char.encode(text)
        assert len(ids) == len(text)  # one token per character, whitespace included
        assert char.decode(ids) == text
    assert char.decode(char.encode("  quick\n\n  fox  ")) == "  quick\n\n  fox  "


def test_char_vocab_is_the_seen_characters_plus_specials(char: Tokenizer) -> None:
    seen = set("".join(TRAINING_TEXT))
    assert char.vocab_size == len(seen) + 2
    vocab = char.backend.get_vocab()
    assert set(vocab) == seen | {EOT, UNK}
    assert sorted(vocab.values()) == list(range(char.vocab_size))
    assert char.kind == "char"


def test_char_unknown_character_maps_to_unk(char: Tokenizer) -> None:
    unk = char.backend.token_to_id(UNK)
    assert unk is not None
    assert unk != char.eot_id
    ids = char.encode("fox€🙂x")
    assert ids[3:5] == [unk, unk]
    assert ids.count(unk) == 2
    assert char.decode(ids) == f"fox{UNK}{UNK}x"


def test_char_literal_endoftext_becomes_the_special_token(char: Tokenizer) -> None:
    ids = char.encode("dog<|endoftext|>fox")
    assert ids == [*char.encode("dog"), char.eot_id, *char.encode("fox")]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "char"])
def test_nfkc_is_stored_in_the_tokenizer_and_applied_after_loading(kind: str, tmp_path) -> None:
    """prepare --normalize nfkc: full-width ＡＢＣ１２３ encodes as ABC123, also in a later
    process that only loads tokenizer.json (generation, evaluation, serving)."""
    from lmforge.tokenizer import Tokenizer

    texts = ["ABC123 hello world, full-width ＡＢＣ１２３ and ﬁ ligatures"] * 30
    sizes = {} if kind == "char" else {"vocab_size": 300}
    trained = getattr(Tokenizer, f"train_{kind}")(texts, **sizes, normalize="nfkc")
    trained.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.encode("ＡＢＣ１２３") == loaded.encode(
        "ABC123" if kind != "wordpiece" else "abc123"
    )
    assert loaded.encode("ﬁ") == loaded.encode("fi")
    plain = getattr(Tokenizer, f"train_{kind}")(texts, **sizes)  # the switch does something
    assert plain.encode("ＡＢＣ１２３") != plain.encode("ABC123")


def test_an_unknown_normalization_is_refused() -> None:
    from lmforge.errors import DataError
    from lmforge.tokenizer import Tokenizer

    with pytest.raises(DataError, match="--normalize"):
        Tokenizer.train_bpe(["some text"] * 5, 300, normalize="nfd")
