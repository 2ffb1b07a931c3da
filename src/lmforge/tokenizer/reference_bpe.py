"""Byte-level BPE as a course teaches it: a short, readable trainer, encoder and decoder.

`Tokenizer.train_bpe` (Hugging Face `tokenizers`, in Rust) stays the fast path; this module
spells out the same algorithm step by step and produces the same merges, vocabulary and ids
(tests/test_reference_bpe.py checks it). Training:

1. Map every byte to a printable character (GPT-2's `bytes_to_unicode`), so a token is a string
   and every Unicode text is covered by 256 symbols.
2. Split each text into pre-tokens with GPT-2's pattern (a word with its leading space, a number,
   a run of punctuation, whitespace) and count how often each pre-token ("word") occurs.
3. Start the vocabulary with the special tokens, then the 256 byte characters.
4. Repeat until the vocabulary has `vocab_size` tokens: count every adjacent pair of symbols over
   the word types, each weighted by its word's count; merge the most frequent pair everywhere.

The rules that make the result identical to `tokenizers` (read in
huggingface/tokenizers, tokenizers/src/models/bpe/trainer.rs, `BpeTrainer::do_train` and the
`Ord` of its `Merge`):

- ids: special tokens first, in the order given; then the alphabet sorted by code point (of the
  byte characters, not of the bytes: "Ġ", the space, is U+0120 and comes after "ÿ"); then each
  new token in the order it is merged.
- ties: among pairs with the same count, the pair whose (left id, right id) is smallest wins.
- a merge happens only when its pair occurs at least max(1, min_frequency) times.
- a merge whose result is already a token (the same string built from other parts) is recorded
  but reuses that token's id, so the vocabulary does not grow.

`tokenizers` updates its pair counts incrementally (a priority queue, refreshed lazily); this
reference recounts every pair each step, which gives the same counts as long as each merge makes
a new token (random corpora never produced a repeated one). Encoding applies the learnt merges
inside each pre-token, lowest rank (earliest learnt) first. Pre-tokens depend on the regex
engine's Unicode tables (Oniguruma in `tokenizers`, `regex` here): a code point that one Unicode
version assigns as a letter and the other leaves unassigned (U+3D866, with the versions tested) may
split differently.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import regex

from lmforge.errors import DataError
from lmforge.tokenizer import EOT

# GPT-2's split: English contractions, a letter run with one optional leading space, a digit run,
# a run of other symbols, whitespace not followed by a non-space (so " word" keeps its space), and
# any remaining whitespace.
GPT2_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

Word = tuple[str, ...]  # a pre-token as its current symbols, e.g. ("Ġth", "e")
Pair = tuple[str, str]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character. The 188 bytes that print and are not a space
    (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68 (controls, space, NBSP,
    soft hyphen) become chr(256 + n), n counting them in byte order: space (0x20) -> "Ġ"."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def pre_tokenize(text: str) -> list[str]:
    """Split `text` with GPT-2's pattern and spell each piece's UTF-8 bytes as byte characters:
    "café!" -> ["cafÃ©", "!"] ("é" is the two bytes C3 A9)."""
    return [
        "".join(BYTE_TO_CHAR[byte] for byte in piece.encode("utf-8"))
        for piece in GPT2_SPLIT_PATTERN.findall(text)
    ]


def count_words(texts: Iterable[str]) -> Counter[str]:
    """How many times each pre-token occurs in the corpus."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pre_tokenize(text))
    return counts


def initial_vocab(special_tokens: Sequence[str]) -> dict[str, int]:
    """Special tokens take ids 0.., then the 256 byte characters in code-point order."""
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *sorted(BYTE_TO_CHAR.values())]:
        vocab.setdefault(token, len(vocab))
    return vocab


def count_pairs(words: dict[Word, int]) -> Counter[Pair]:
    """count(a, b) = Σ over word types w of count(w) × (occurrences of a, b adjacent in w).
    Overlaps count: "aaa" holds the pair (a, a) twice."""
    pairs: Counter[Pair] = Counter()
    for symbols, count in words.items():
        for pair in pairwise(symbols):
            pairs[pair] += count
    return pairs


def most_frequent_pair(pairs: Counter[Pair], vocab: dict[str, int]) -> Pair:
    """The pair with the highest count; on a tie, the smallest (id of left, id of right)."""
    return min(pairs, key=lambda pair: (-pairs[pair], vocab[pair[0]], vocab[pair[1]]))


def merge_pair(symbols: Word, pair: Pair) -> Word:
    """Replace each occurrence of `pair` by one symbol, scanning left to right without overlap:
    merging (a, a) in "aaa" gives ("aa", "a")."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


@dataclass
class ReferenceBPE:
    """A trained byte-level BPE: `vocab` (token -> id, special tokens included) and `merges`
    (in the order learnt; a merge's index is its rank)."""

    vocab: dict[str, int]
    merges: list[Pair]
    special_tokens: tuple[str, ...] = (EOT,)
    ranks: dict[Pair, int] = field(init=False, repr=False)
    tokens: dict[int, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ranks = {}
        for rank, pair in enumerate(self.merges):
            self.ranks.setdefault(pair, rank)
        self.tokens = {i: token for token, i in self.vocab.items()}

    def bpe(self, pre_token: str) -> Word:
        """Split one pre-token into tokens: start from its byte characters and, while some
        adjacent pair has a merge, merge every occurrence of the lowest-ranked one."""
        symbols: Word = tuple(pre_token)
        while len(symbols) > 1:
            adjacent = [p for p in pairwise(symbols) if p in self.ranks]
            if not adjacent:
                break
            symbols = merge_pair(symbols, min(adjacent, key=self.ranks.__getitem__))
        return symbols

    def _split_special(self, text: str) -> list[str]:
        """`text` cut around each special token, which is kept as a part of its own."""
        if not self.special_tokens:
            return [text]
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        pattern = "(" + "|".join(regex.escape(token) for token in longest_first) + ")"
        return [part for part in regex.split(pattern, text) if part]

    def encode(self, text: str) -> list[int]:
        """Token ids: special tokens are matched first (anywhere in the text), then each other
        part is pre-tokenized and each pre-token split by `bpe`."""
        ids: list[int] = []
        for part in self._split_special(text):
            if part in self.special_tokens:
                ids.append(self.vocab[part])
                continue
            for pre_token in pre_tokenize(part):
                ids.extend(self.vocab[token] for token in self.bpe(pre_token))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenate the tokens' bytes and read them as UTF-8 (an incomplete character, from
        ids cut mid-character, becomes U+FFFD)."""
        data = bytearray()
        for i in ids:
            token = self.tokens[i]
            if token in self.special_tokens:
                data += token.encode("utf-8")
            else:
                data += bytes(CHAR_TO_BYTE[char] for char in token)
        return data.decode("utf-8", errors="replace")


def train(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT,),
    min_frequency: int = 0,
) -> ReferenceBPE:
    """Learn merges until the vocabulary holds `vocab_size` tokens, or no pair occurs
    max(1, min_frequency) times. Each step recounts every pair: slow, but plain to read."""
    vocab = initial_vocab(special_tokens)
    if vocab_size < len(vocab):
        raise DataError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: the special tokens and "
            f"256 bytes already take {len(vocab)}; use at least {len(vocab)}"
        )
    words: dict[Word, int] = {tuple(word): n for word, n in count_words(texts).items()}
    merges: list[Pair] = []
    while len(vocab) < vocab_size:
        pairs = count_pairs(words)
        if not pairs:
            break
        best = most_frequent_pair(pairs, vocab)
        if pairs[best] < max(1, min_frequency):
            break
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        words = {merge_pair(symbols, best): n for symbols, n in words.items()}
    return ReferenceBPE(vocab=vocab, merges=merges, special_tokens=tuple(special_tokens))
