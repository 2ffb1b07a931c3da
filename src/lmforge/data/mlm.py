"""BERT masked-language-model masking (Devlin et al. 2019, §3.1) and ready MLM / MLM+NSP batches.

Dynamic masking: a new mask is drawn every time a batch is built, from the batch's generator.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.data.sentences import SentenceCorpus, nsp_examples, unpack_word_starts
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class BertVocab:
    """The special ids and vocabulary lookup tables BERT batches need, built once per tokenizer."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special: torch.Tensor  # (V,) bool: never masked, never a random replacement
    continuation: torch.Tensor | None = None  # (V,) bool on "##" pieces; set → whole-word masking
    segmented: bool = False  # the corpus packs segmenter word starts into its ids (--segmenter)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, whole_word: bool = False) -> "BertVocab":
        ids = (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id)
        if any(i is None for i in ids):
            raise DataError(
                f"a {tokenizer.kind} tokenizer lacks the BERT specials [CLS] [SEP] [PAD] [MASK]; "
                "prepare the data with --tokenizer wordpiece"
            )
        special = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        special[list(tokenizer.special_ids)] = True
        continuation = continuation_table(tokenizer) if whole_word else None
        return cls(*ids, special=special, continuation=continuation)

    @property
    def replacement_ids(self) -> torch.Tensor:
        """The ids a masked token may be replaced by at random: every non-special id."""
        return torch.nonzero(~self.special).squeeze(1)


def continuation_table(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) bool, True on WordPiece continuation pieces (tokens that start with `##`)."""
    prefix = getattr(tokenizer.backend.model, "continuing_subword_prefix", None)
    if not prefix:
        raise DataError(f"a {tokenizer.kind} tokenizer has no word pieces; use wordpiece")
    tokens = np.array(tokenizer.vocab(), dtype=str)
    return torch.from_numpy(np.char.startswith(tokens, prefix))


def word_starts(ids: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True where a token begins a word (it is not a `##` continuation)."""
    return ~continuation[ids]


def mask_tokens(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    replacement_ids: torch.Tensor,
    generator: torch.Generator,
    mask_id: int,
    prob: float = 0.15,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of (B, T) ids: returns (inputs, targets).

    In each sequence exactly k = max(1, round(prob · n)) of its n eligible tokens (not special,
    not padding) are chosen uniformly without replacement, like BERT's `num_to_predict` (round
    half to even); a fixed count keeps the loss scale steady where Bernoulli draws would not.
    Each chosen token independently becomes [MASK] (80%), a random id from replacement_ids (10%)
    or stays (10%). targets hold the original id at chosen positions and -100 elsewhere.

    With word_starts (whole-word masking), a word is a start token plus the `##` pieces after it,
    and whole words are taken in random order until the chosen token count is nearest to k (at
    least one word); the 80/10/10 choice is still made per token, as in BERT.
    """
    eligible = ~special_mask
    n = eligible.sum(1)
    k = torch.where(n > 0, torch.clamp(torch.round(n * prob), min=1), 0).long()  # (B,)
    if word_starts is None:
        chosen = _choose_tokens(eligible, k, generator)
    else:
        chosen = _choose_words(eligible, word_starts, k, generator)
    action = torch.rand(ids.shape, generator=generator)
    draws = torch.randint(len(replacement_ids), ids.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    random = chosen & (action >= 0.8) & (action < 0.9)
    inputs = torch.where(random, replacement_ids[draws], inputs)
    targets = torch.where(chosen, ids, IGNORE_INDEX)
    return inputs, targets


def _choose_tokens(
    eligible: torch.Tensor, k: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) bool: k[b] eligible positions of row b, uniformly without replacement."""
    keys = torch.rand(eligible.shape, generator=generator)
    order = keys.masked_fill(~eligible, 2.0).argsort(1)  # ineligible positions sort last
    first_k = torch.arange(eligible.shape[1]) < k[:, None]  # (B, T) in sorted order
    return torch.zeros_like(eligible).scatter_(1, order, first_k)


def _choose_words(
    eligible: torch.Tensor, starts: torch.Tensor, k: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) bool: whole words in random order until the token count is nearest to k[b]."""
    after_special = F.pad(~eligible[:, :-1], (1, 0), value=True)
    starts = starts | ~eligible | after_special  # orphan pieces after [CLS]/[SEP] start a word
    word = starts.long().cumsum(1) - 1  # (B, T) index of each token's word in its row
    length = torch.zeros_like(word).scatter_add_(1, word, eligible.long())  # (B, W=T) tokens
    keys = torch.rand(word.shape, generator=generator).masked_fill(length == 0, 2.0)
    order = keys.argsort(1)  # words in random order, non-words last
    sorted_length = length.gather(1, order)
    after = sorted_length.cumsum(1)
    before = after - sorted_length
    # the nearest prefix total: take a word while the midpoint of its span of counts is below k
    take = ((before + after < 2 * k[:, None]) | (before == 0)) & (sorted_length > 0)
    taken = torch.zeros_like(take).scatter_(1, order, take)  # back to word order
    return taken.gather(1, word) & eligible


def mask_batch(
    batch: Batch,
    vocab: BertVocab,
    generator: torch.Generator,
    prob: float = 0.15,
    starts: torch.Tensor | None = None,
) -> Batch:
    """Mask a batch of unmasked BERT examples (specials and padding are never chosen).

    Whole words are masked together when starts (B, T) bool marks where words begin (a
    segmenter's words), else when vocab has a continuation table (WordPiece's `##` pieces).
    """
    special_mask = vocab.special[batch.inputs]
    if batch.attention_mask is not None:
        special_mask |= ~batch.attention_mask
    if starts is None and vocab.continuation is not None:
        starts = word_starts(batch.inputs, vocab.continuation)
    inputs, targets = mask_tokens(
        batch.inputs, special_mask, vocab.replacement_ids, generator, vocab.mask_id, prob, starts
    )
    return dataclasses.replace(batch, inputs=inputs, targets=targets)


def mlm_batch(
    corpus: SentenceCorpus,
    batch_size: int,
    max_seq_len: int,
    generator: torch.Generator,
    vocab: BertVocab,
    nsp: bool = True,
    prob: float = 0.15,
) -> Batch:
    """A ready BERT pretraining batch: NSP pairs (or MLM-only runs of sentences), masked.

    With vocab.segmented the corpus carries word starts (`TokenShards.sentences(split, True)`) and
    each segmented word is masked whole.
    """
    batch = nsp_examples(
        corpus, batch_size, max_seq_len, generator, vocab.cls_id, vocab.sep_id, vocab.pad_id, nsp
    )
    starts = None
    if vocab.segmented:
        inputs, starts = unpack_word_starts(batch.inputs)
        batch = dataclasses.replace(batch, inputs=inputs)
    return mask_batch(batch, vocab, generator, prob, starts)
