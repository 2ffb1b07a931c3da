"""MLM masking: 15% of eligible tokens, 80/10/10, specials and padding untouched, whole words."""

import pytest
import torch

from lmforge.data.mlm import (
    BertVocab,
    continuation_table,
    mask_batch,
    mask_tokens,
    mlm_batch,
    word_starts,
)
from lmforge.data.sentence_split import split_sentences
from lmforge.data.sentences import SentenceCorpus, nsp_examples
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer

PAD, UNK, CLS, SEP, MASK = range(5)
V = 400  # ids 5..199 start words, 200..399 are "##" continuations
SPECIALS = torch.arange(5)
REPLACEMENTS = torch.arange(5, V)


def _sequences(generator: torch.Generator, batch: int = 512, length: int = 128):
    """[CLS] x [SEP] y [SEP] [PAD]... rows of random lengths; returns (ids, special_mask)."""
    ids = torch.randint(5, V, (batch, length), generator=generator)
    lengths = torch.randint(8, length + 1, (batch,), generator=generator)
    seps = torch.randint(2, 6, (batch,), generator=generator)
    position = torch.arange(length)[None]
    ids[:, 0] = CLS
    ids[torch.arange(batch), seps] = SEP
    ids[torch.arange(batch), lengths - 1] = SEP
    ids = ids.masked_fill(position >= lengths[:, None], PAD)
    ids[:5, 1] = UNK  # an [UNK] in the text is special too, as in Hugging Face
    return ids, torch.isin(ids, SPECIALS)


@pytest.fixture(scope="module")
def masked() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids, special = _sequences(g)
    inputs, targets = mask_tokens(ids, special, REPLACEMENTS, g, MASK)
    return ids, special, inputs, targets


def test_exactly_15_percent_of_eligible_tokens_per_sequence(masked) -> None:
    ids, special, _, targets = masked
    chosen = targets != -100
    eligible = (~special).sum(1)
    expected = torch.clamp(torch.round(eligible * 0.15), min=1)
    assert torch.equal(chosen.sum(1), expected.long())
    assert abs(chosen.sum().item() / eligible.sum().item() - 0.15) < 0.01
    assert torch.equal(targets[chosen], ids[chosen])


def test_chosen_tokens_split_80_10_10(masked) -> None:
    ids, _, inputs, targets = masked
    chosen = targets != -100
    n = chosen.sum().item()
    to_mask = (inputs[chosen] == MASK).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = ((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum().item() / n
    assert abs(to_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02
    assert abs(replaced - 0.1) < 0.02
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes


def test_specials_and_padding_are_never_masked_or_used_as_replacements(masked) -> None:
    ids, special, inputs, targets = masked
    assert (targets[special] == -100).all()
    assert torch.equal(inputs[special], ids[special])
    chosen = targets != -100
    replacements = inputs[chosen & (inputs != MASK)]
    assert not torch.isin(replacements, SPECIALS).any()
    random = inputs[chosen & (inputs != MASK) & (inputs != ids)]
    assert random.min() < 15  # drawn from the whole non-special vocabulary
    assert random.max() > V - 10


def test_random_replacements_come_only_from_replacement_ids() -> None:
    g = torch.Generator().manual_seed(1)
    ids, special = _sequences(g)
    allowed = torch.tensor([7, 11])
    inputs, targets = mask_tokens(ids, special, allowed, g, MASK)
    changed = (targets != -100) & (inputs != MASK) & (inputs != ids)
    assert changed.any()
    assert torch.isin(inputs[changed], allowed).all()


def test_masking_is_deterministic_given_the_generator() -> None:
    ids, special = _sequences(torch.Generator().manual_seed(2))
    runs = [
        mask_tokens(ids, special, REPLACEMENTS, torch.Generator().manual_seed(s), MASK)
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_rows_without_eligible_tokens_stay_unmasked() -> None:
    ids = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, 9, SEP, PAD]])
    g = torch.Generator().manual_seed(0)
    inputs, targets = mask_tokens(ids, torch.isin(ids, SPECIALS), REPLACEMENTS, g, MASK)
    assert (targets[0] == -100).all()
    assert torch.equal(inputs[0], ids[0])
    assert targets[1].tolist() == [-100, 9, -100, -100]  # one token is always chosen


# ---------------------------------------------------------------- whole-word masking


def _words(ids: torch.Tensor, special: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """(B, T) index of each token's word, counting orphan pieces after specials as word starts."""
    after_special = torch.nn.functional.pad(special[:, :-1], (1, 0), value=True)
    return (~continuation[ids] | special | after_special).long().cumsum(1)


def test_whole_word_masking_masks_all_pieces_of_a_word_together() -> None:
    g = torch.Generator().manual_seed(5)
    ids, special = _sequences(g)
    continuation = torch.arange(V) >= 200
    starts = word_starts(ids, continuation)
    inputs, targets = mask_tokens(ids, special, REPLACEMENTS, g, MASK, word_starts=starts)
    chosen = targets != -100
    assert not chosen[special].any()
    words = _words(ids, special, continuation)
    multi_piece = 0
    for row in range(len(ids)):
        for word in torch.unique(words[row][chosen[row]]):
            in_word = (words[row] == word) & ~special[row]
            assert chosen[row][in_word].all()  # every piece of a chosen word is chosen
            multi_piece += int(in_word.sum() > 1)
    assert multi_piece > 1000
    rate = chosen.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    assert abs((inputs[chosen] == MASK).float().mean().item() - 0.8) < 0.02


def test_orphan_pieces_after_cls_form_their_own_word() -> None:
    """A row that starts mid-word (##a ##b after [CLS]): those pieces are one maskable word."""
    ids = torch.tensor([[CLS, 250, 251, 10, 260, SEP]])
    special = torch.isin(ids, SPECIALS)
    starts = word_starts(ids, torch.arange(V) >= 200)
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        _, targets = mask_tokens(ids, special, REPLACEMENTS, g, MASK, 0.3, starts)
        seen.add(tuple((targets[0] != -100).tolist()))
    assert seen == {
        (False, True, True, False, False, False),
        (False, False, False, True, True, False),
    }


# ---------------------------------------------------------------- with a real tokenizer

TEXTS = [
    f"Paragraph {i} talks about tokenization. Unbelievably, wordpieces reassemble words! "
    f"Extraordinary sentences follow {i * 7}. The end."
    for i in range(40)
]


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece(TEXTS, vocab_size=150)


@pytest.fixture(scope="module")
def sentences(wordpiece: Tokenizer) -> SentenceCorpus:
    return SentenceCorpus.from_documents(
        [[wordpiece.encode(s) for s in split_sentences(t)] for t in TEXTS], separator=SEP
    )


def test_continuation_table_marks_the_hash_pieces(wordpiece: Tokenizer) -> None:
    table = continuation_table(wordpiece)
    vocab = wordpiece.vocab()
    assert table.dtype == torch.bool
    assert table.tolist() == [t.startswith("##") for t in vocab]
    assert table.any()
    ids = torch.tensor([wordpiece.encode("unbelievably extraordinary")])
    starts = word_starts(ids, table)
    assert starts.sum().item() == 2
    assert starts[0, 0]


def test_a_hash_sign_is_a_word_not_a_continuation() -> None:
    """`#` is punctuation (its own word); only the `##` prefix marks a continuation piece."""
    texts = [f"Issue #{i} in C# is tagged #bug and #feature, see ## notes {i}." for i in range(30)]
    tokenizer = Tokenizer.train_wordpiece(texts, vocab_size=120)
    table = continuation_table(tokenizer)
    vocab = tokenizer.vocab()
    assert "#" in vocab
    assert not table[vocab.index("#")]
    assert table.tolist() == [t.startswith("##") for t in vocab]
    ids = torch.tensor([tokenizer.encode("#bug ##")])
    assert word_starts(ids, table)[0].tolist() == [True] * ids.shape[1]  # #, bug, #, #


def test_bert_vocab_from_tokenizer(wordpiece: Tokenizer) -> None:
    vocab = BertVocab.from_tokenizer(wordpiece, whole_word=True)
    assert (vocab.cls_id, vocab.sep_id, vocab.pad_id, vocab.mask_id) == (CLS, SEP, PAD, MASK)
    assert torch.nonzero(vocab.special).squeeze(1).tolist() == [0, 1, 2, 3, 4]
    assert vocab.replacement_ids.tolist() == list(range(5, wordpiece.vocab_size))
    assert vocab.continuation is not None
    assert BertVocab.from_tokenizer(wordpiece).continuation is None
    with pytest.raises(DataError, match="wordpiece"):
        BertVocab.from_tokenizer(Tokenizer.train_char(TEXTS))
    with pytest.raises(DataError, match="word pieces"):
        continuation_table(Tokenizer.train_char(TEXTS))


@pytest.mark.parametrize("whole_word", [False, True])
@pytest.mark.parametrize("nsp", [True, False])
def test_mlm_batch_is_ready_to_train(
    wordpiece: Tokenizer, sentences: SentenceCorpus, nsp: bool, whole_word: bool
) -> None:
    vocab = BertVocab.from_tokenizer(wordpiece, whole_word=whole_word)
    batch = mlm_batch(sentences, 64, 32, torch.Generator().manual_seed(0), vocab, nsp=nsp)
    again = mlm_batch(sentences, 64, 32, torch.Generator().manual_seed(0), vocab, nsp=nsp)
    assert torch.equal(batch.inputs, again.inputs)
    assert torch.equal(batch.targets, again.targets)
    # Unmasking gives back the examples nsp_examples draws from the same generator state.
    plain = nsp_examples(
        sentences, 64, 32, torch.Generator().manual_seed(0), CLS, SEP, PAD, nsp=nsp
    )
    chosen = batch.targets != -100
    assert torch.equal(torch.where(chosen, batch.targets, batch.inputs), plain.inputs)
    assert torch.equal(batch.token_types, plain.token_types)
    assert torch.equal(batch.attention_mask, plain.attention_mask)
    assert (batch.labels is None) == (not nsp)
    assert not chosen[~batch.attention_mask].any()
    assert not torch.isin(plain.inputs[chosen], torch.arange(5)).any()
    assert (chosen.sum(1) >= 1).all()
    assert batch.inputs.shape[1] <= 32


def test_mask_batch_never_masks_padding_even_if_pad_is_not_special(wordpiece: Tokenizer) -> None:
    vocab = BertVocab.from_tokenizer(wordpiece)
    special = vocab.special.clone()
    special[PAD] = False
    odd = BertVocab(CLS, SEP, PAD, MASK, special=special)
    plain = nsp_examples(
        SentenceCorpus.from_documents([[[9, 10, 11], [12]], [[13, 14], [15, 16, 17, 18]]]),
        256,
        12,
        torch.Generator().manual_seed(0),
        CLS,
        SEP,
        PAD,
    )
    masked = mask_batch(plain, odd, torch.Generator().manual_seed(1), prob=0.5)
    assert (masked.targets[~plain.attention_mask] == -100).all()
    assert (masked.inputs[~plain.attention_mask] == PAD).all()
    eligible = (~special[plain.inputs] & plain.attention_mask).sum(1)
    expected = torch.clamp(torch.round(eligible * 0.5), min=1).long()
    assert torch.equal((masked.targets != -100).sum(1), expected)
