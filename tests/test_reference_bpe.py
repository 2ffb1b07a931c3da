"""The readable reference BPE (lmforge.tokenizer.reference_bpe) against Hugging Face `tokenizers`:
the same merges, the same vocabulary (token -> id) and the same ids, and a lossless round trip."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.errors import DataError
from lmforge.tokenizer import EOT, Tokenizer, reference_bpe
from lmforge.tokenizer.reference_bpe import ReferenceBPE

PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog. The dog didn't move; it's a lazy dog!",
    "We'll see what they've done: you're right, I'm sure she'd agree, and that's that.",
    "In 1999 we sold 12,345 apples for $3.14 each -- 678 pears, too... Really?! Yes (really).",
    "Le café était fermé, alors nous sommes allés à la boulangerie. Déjà vu, naïve façade.",
    "我们在北京学习中文。中文很有意思！北京的冬天很冷。 Emoji: 🙂 🚀🎉 and 🙂🙂 again.",
    "def train(model, data):\n    for step in range(100):\n\tloss = model(data)  # forward\n",
    "aaaa bbbb aaaa!!!! ???? .... hahaha hahaha lolol lololol zzzzzz 0000 1111 2222",
    "Tokenizers split text into pieces;   pieces become ids.\n\nIds become vectors.\r\n",
    "Numbers: 3.5 million, 42%, 7/8, 2024-12-31, +1 (555) 010-9999, and 1e-3.",
    "the the the and and of of to to in in is is it it that that was was for for",
)
CORPUS = [f"{p}\n{p.upper()} {p.lower()}\n" for p in PARAGRAPHS] * 5  # ~5 KB

HELD_OUT = (
    "Unseen words: zebra, quixotic, xylophone; jackdaws love my big sphinx of quartz.",
    "naïveté, Ærøskøbing, São Paulo, Zürich — und über Straße.",
    "你好，世界！今天天气很好。",
    "emoji never seen: 🦄🐉 👩‍👩‍👧 🇯🇵 and a seen one 🙂",
    "before<|endoftext|>after, a near miss <|endoftext| and <|endoftext|><|endoftext|>",
    "   leading, trailing   \n\n\t mixed whitespace \r\n  ",
    "They'll say it's 100% done'; I'd say 99.9%... 'quoted' \"double\"",
    "",
)


def hf_merges(backend: HFTokenizer) -> list[tuple[str, str]]:
    """The learnt merges, in rank order, from the tokenizer.json of `backend`."""
    merges = json.loads(backend.to_str())["model"]["merges"]
    # tokenizers < 0.20 writes "a b"; byte-level tokens hold no plain space, so split is exact
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def hf_byte_level_bpe(
    texts: list[str], vocab_size: int, special_tokens: list[str], min_frequency: int = 0
) -> HFTokenizer:
    """Tokenizer.train_bpe's configuration with the trainer options it does not expose."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


@pytest.fixture(scope="module", params=[300, 400])
def trained(request: pytest.FixtureRequest) -> tuple[Tokenizer, ReferenceBPE]:
    vocab_size = request.param
    return Tokenizer.train_bpe(CORPUS, vocab_size=vocab_size), reference_bpe.train(
        CORPUS, vocab_size
    )


@pytest.fixture(scope="module")
def pair_400() -> tuple[Tokenizer, ReferenceBPE]:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400), reference_bpe.train(CORPUS, 400)


def test_the_byte_table_is_gpt2s() -> None:
    table = reference_bpe.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (table[ord(" ")], table[ord("\n")], table[ord("A")], table[0xAD]) == ("Ġ", "Ċ", "A", "Ń")
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_same_merges_as_tokenizers(trained: tuple[Tokenizer, ReferenceBPE]) -> None:
    hf, ref = trained
    assert ref.merges == hf_merges(hf.backend)
    assert len(ref.merges) == hf.vocab_size - 257  # no merge repeats a token on this corpus


def test_same_vocabulary_and_ids_as_tokenizers(trained: tuple[Tokenizer, ReferenceBPE]) -> None:
    hf, ref = trained
    assert ref.vocab == hf.backend.get_vocab(with_added_tokens=True)
    assert len(ref.vocab) == hf.vocab_size
    assert ref.vocab[EOT] == hf.eot_id == 0
    assert ref.vocab["Ġ"] > ref.vocab["ÿ"]  # code-point order of the characters, not byte order


@pytest.mark.parametrize("text", HELD_OUT)
def test_same_ids_on_held_out_text(trained: tuple[Tokenizer, ReferenceBPE], text: str) -> None:
    hf, ref = trained
    ids = ref.encode(text)
    assert ids == hf.encode(text)
    assert ref.decode(ids) == hf.decode(ids) == text


def test_merges_compress_text(pair_400: tuple[Tokenizer, ReferenceBPE]) -> None:
    """The ids above are merged tokens, not only bytes (so equal ids test the merge order)."""
    _, ref = pair_400
    text = PARAGRAPHS[0]
    assert len(ref.encode(text)) < 0.7 * len(text.encode("utf-8"))


# Characters and fragments the corpus taught (merges apply) mixed with unseen ones.
FRAGMENTS = [
    *"aeiostxzAÉ019 \n\t.,;!?'\"-()%$",
    *["é", "ï", "中", "文", "北京", "🙂", "🦄", "\r\n", "   ", "'s", "'ll", "n't"],
    *[" the", " dog", " lazy", " hahaha", " 1999", "....", "!!!!", EOT, "<|endoftext|"],
]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_same_ids_on_random_mixtures(pair_400: tuple[Tokenizer, ReferenceBPE], text: str) -> None:
    hf, ref = pair_400
    assert ref.encode(text) == hf.encode(text)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(max_size=40))
def test_decode_inverts_encode_on_any_unicode(
    pair_400: tuple[Tokenizer, ReferenceBPE], text: str
) -> None:
    _, ref = pair_400
    assert ref.decode(ref.encode(text)) == text


def test_min_frequency_stops_merging_as_tokenizers_does() -> None:
    specials = [EOT]
    unlimited = reference_bpe.train(CORPUS, 2000)
    ref = reference_bpe.train(CORPUS, 2000, min_frequency=40)
    hf = hf_byte_level_bpe(CORPUS, 2000, specials, min_frequency=40)
    assert ref.merges == hf_merges(hf)
    assert ref.vocab == hf.get_vocab()
    assert 0 < len(ref.merges) < len(unlimited.merges)  # the switch changed something


def test_training_ends_when_every_word_is_one_token() -> None:
    texts = ["hello hello world, hello wor"]
    ref = reference_bpe.train(texts, 1000)
    hf = hf_byte_level_bpe(texts, 1000, [EOT])
    assert ref.merges == hf_merges(hf)
    assert ref.vocab == hf.get_vocab()
    assert len(ref.vocab) < 1000
    assert [len(ref.encode(word)) for word in ["hello", " hello", " world", ","]] == [1, 1, 1, 1]


def test_special_tokens_take_the_first_ids_in_order() -> None:
    specials = ["<|pad|>", EOT, "<|user|>"]
    texts = [*CORPUS, "a <|user|> turn"]
    ref = reference_bpe.train(texts, 300, special_tokens=specials)
    hf = hf_byte_level_bpe(texts, 300, specials)
    assert [ref.vocab[t] for t in specials] == [0, 1, 2]
    assert ref.vocab == hf.get_vocab()
    assert ref.merges == hf_merges(hf)
    text = "x<|user|>hi<|pad|>"
    assert ref.encode(text) == hf.encode(text).ids
    assert ref.decode(ref.encode(text)) == text


def test_vocab_size_below_the_alphabet_is_a_user_error() -> None:
    with pytest.raises(DataError, match=r"vocab_size 256 is too small.*at least 257"):
        reference_bpe.train(CORPUS, 256)
    assert reference_bpe.train(CORPUS, 257).merges == []
