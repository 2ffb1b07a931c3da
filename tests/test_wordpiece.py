"""WordPiece (BERT) tokenizer: specials, normalisation, pairs, transformers parity, special ids."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.errors import DataError
from lmforge.tokenizer import BERT_SPECIALS, EOT, Tokenizer

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n" * 5,
    "Café au lait, naïve résumé, São Paulo, Zürich and Ångström.\n" * 5,
    "漢字かなカナ한국어 and emoji 🙂👍🏽 in one line. Numbers: 3.14, 2024, 1e-9!\n" * 5,
    "Sphinx of black quartz, judge my vow? How vexingly quick daft zebras jump.\n" * 5,
]

# Accents (composed and combining), CJK (split per character), Hangul, emoji (ZWJ, skin tone),
# punctuation runs, control characters, odd spaces, words never seen in training.
PARITY_TEXTS = [
    "The quick brown fox.",
    "Café naïve RÉSUMÉ e\u0301 a\u0308 Ångström",
    "漢字かなカナ한국어 — CJK text",
    "emoji 👩\u200d👩\u200d👧\u200d👦 🇯🇵 👍🏽 ✨ 🙂",
    "punctuation!!! ... ?? (brackets) [x] {y} 'quotes' \"double\" a-b_c/d\\e",
    "tabs\tand\nnewlines\r\n and \u00a0nbsp\u200bzero-width \x00\x07 controls",
    "unseenwordsxyzzy supercalifragilistic Qwertyuiop",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece(TRAINING_TEXT, vocab_size=300)


@pytest.fixture(scope="module")
def cased() -> Tokenizer:
    return Tokenizer.train_wordpiece(TRAINING_TEXT, vocab_size=300, lowercase=False)


def test_specials_have_ids_0_to_4_in_bert_order(wordpiece: Tokenizer) -> None:
    assert wordpiece.kind == "wordpiece"
    assert (
        wordpiece.vocab()[:5]
        == list(BERT_SPECIALS)
        == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    ids = (
        wordpiece.pad_id,
        wordpiece.unk_id,
        wordpiece.cls_id,
        wordpiece.sep_id,
        wordpiece.mask_id,
    )
    assert ids == (0, 1, 2, 3, 4)
    assert wordpiece.special_ids == frozenset(range(5))
    assert wordpiece.special_id("[MASK]") == 4
    assert wordpiece.special_id(EOT) is None
    assert wordpiece.separator_id == wordpiece.sep_id
    assert 5 < wordpiece.vocab_size <= 300


def test_wordpiece_has_no_eot_and_says_so(wordpiece: Tokenizer) -> None:
    with pytest.raises(DataError, match=r"no <\|endoftext\|>.*bpe or char"):
        _ = wordpiece.eot_id


def test_vocab_lists_tokens_by_id(wordpiece: Tokenizer) -> None:
    vocab = wordpiece.vocab()
    assert len(vocab) == wordpiece.vocab_size
    assert all(wordpiece.backend.token_to_id(t) == i for i, t in enumerate(vocab))
    assert any(t.startswith("##") for t in vocab)  # continuation pieces exist


def test_words_split_into_pieces_and_decode_back(wordpiece: Tokenizer) -> None:
    text = "the quick brown fox jumps over the lazy dog."
    ids = wordpiece.encode(text)
    assert wordpiece.decode(ids) == text
    pieces = [wordpiece.vocab()[i] for i in wordpiece.encode("zebrafoxes")]
    assert len(pieces) > 1
    assert not pieces[0].startswith("##")
    assert all(p.startswith("##") for p in pieces[1:])


def test_unknown_characters_map_to_unk(wordpiece: Tokenizer) -> None:
    ids = wordpiece.encode("fox ☃ dog")
    assert ids.count(wordpiece.unk_id) == 1
    assert wordpiece.decode(ids) == "fox [UNK] dog"


def test_lowercase_strips_accents_by_default_as_in_bert(
    wordpiece: Tokenizer, cased: Tokenizer
) -> None:
    assert wordpiece.encode("CAFÉ Zürich") == wordpiece.encode("cafe zurich")
    assert cased.encode("Café") != cased.encode("cafe")
    keep = Tokenizer.train_wordpiece(TRAINING_TEXT, vocab_size=300, strip_accents=False)
    assert keep.encode("CAFÉ") == keep.encode("café") != keep.encode("cafe")


def test_cjk_characters_are_separate_words(wordpiece: Tokenizer) -> None:
    tokens = [wordpiece.vocab()[i] for i in wordpiece.encode("漢字かな")]
    assert tokens[:2] == ["漢", "字"]  # handle_chinese_chars puts spaces around each Han char


def test_single_and_pair_encoding_add_bert_specials(wordpiece: Tokenizer) -> None:
    a, b = wordpiece.encode("the quick fox."), wordpiece.encode("a lazy dog!")
    assert wordpiece.encode("the quick fox.", add_special_tokens=True) == [2, *a, 3]
    ids, types = wordpiece.encode_pair("the quick fox.", "a lazy dog!")
    assert ids == [2, *a, 3, *b, 3]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_encode_pair_needs_bert_specials() -> None:
    char = Tokenizer.train_char(TRAINING_TEXT)
    with pytest.raises(DataError, match=r"\[CLS\]"):
        char.encode_pair("a", "b")


def test_save_load_round_trip(tmp_path: Path, wordpiece: Tokenizer) -> None:
    wordpiece.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.sha256() == wordpiece.sha256()
    assert loaded.kind == "wordpiece"
    assert loaded.special_ids == wordpiece.special_ids
    for text in PARITY_TEXTS:
        assert loaded.encode(text) == wordpiece.encode(text)
        assert loaded.encode_pair(text, "x y") == wordpiece.encode_pair(text, "x y")


@pytest.mark.parametrize("lowercase", [True, False])
def test_bert_tokenizer_fast_gives_identical_ids_and_token_types(
    tmp_path: Path, wordpiece: Tokenizer, cased: Tokenizer, lowercase: bool
) -> None:
    from transformers import BertTokenizerFast

    tok = wordpiece if lowercase else cased
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    hf = BertTokenizerFast(tokenizer_file=str(path), do_lower_case=lowercase)
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id) == (0, 1, 2)
    assert (hf.sep_token_id, hf.mask_token_id) == (3, 4)
    for text in PARITY_TEXTS:
        single = hf(text)
        assert single["input_ids"] == tok.encode(text, add_special_tokens=True)
        assert single["token_type_ids"] == [0] * len(single["input_ids"])
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        ids = tok.encode(text)
        assert hf.decode(ids) == tok.decode(ids)
        for other in PARITY_TEXTS[:4]:
            pair = hf(text, other)
            assert (pair["input_ids"], pair["token_type_ids"]) == tok.encode_pair(text, other)


def test_a_bert_vocabulary_without_eot_is_valid() -> None:
    """Hugging Face's BERT layout: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103."""
    vocab = {"[PAD]": 0, **{f"[unused{i}]": i for i in range(1, 100)}}
    vocab |= {"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "hello": 104, "##s": 105}
    backend = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok = Tokenizer(backend)
    assert tok.kind == "wordpiece"
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.special_ids == {0, 100, 101, 102, 103}  # [unusedN] are ordinary tokens
    assert tok.encode("hellos") == [104, 105]


def test_only_registered_special_tokens_count_as_specials() -> None:
    """A plain vocabulary entry spelled "[SEP]" is not the separator."""
    vocab = {"a": 0, "[SEP]": 1, "[MASK]": 2, EOT: 3}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="a"))
    backend.add_special_tokens([EOT])
    tok = Tokenizer(backend)
    assert (tok.sep_id, tok.mask_id, tok.cls_id, tok.pad_id) == (None, None, None, None)
    assert tok.special_ids == {3}
    assert tok.separator_id == tok.eot_id == 3


def test_bpe_and_char_keep_eot_and_have_no_bert_specials() -> None:
    for tok in (Tokenizer.train_bpe(TRAINING_TEXT, 300), Tokenizer.train_char(TRAINING_TEXT)):
        assert tok.separator_id == tok.eot_id == tok.special_id(EOT)
        assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (None, None, None, None)
        assert tok.eot_id in tok.special_ids
    char = Tokenizer.train_char(TRAINING_TEXT)
    assert char.unk_id == char.special_id("<|unk|>")
    assert Tokenizer.train_bpe(TRAINING_TEXT, 300).unk_id is None


def test_vocab_size_too_small_is_rejected() -> None:
    with pytest.raises(DataError, match="too small"):
        Tokenizer.train_wordpiece(TRAINING_TEXT, vocab_size=5)


def test_generation_with_a_wordpiece_tokenizer_fails_clearly(wordpiece: Tokenizer) -> None:
    """generate_text needs <|endoftext|> as its stop token: a DataError, before the model runs."""
    from lmforge.config import ModelConfig, SamplingConfig
    from lmforge.generation.loop import generate_text
    from lmforge.model import GPT

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=wordpiece.vocab_size)
    with pytest.raises(DataError, match="endoftext"):
        next(generate_text(GPT(cfg), wordpiece, "hello", SamplingConfig()))
