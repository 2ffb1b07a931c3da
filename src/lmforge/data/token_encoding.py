"""Documents to token ids for the shards, in worker processes while the main one reads and cleans.

`prepare` cuts the cleaned documents into batches of a few million characters. Each batch is
encoded by `encode_batch` through a `PieceEncoder`: text is cut into whitespace-led pieces at
points where the tokenizer's own pre-tokenizer always cuts, and each distinct piece is encoded
once with `tokenizers`' batch API (without character offsets, `encode_batch_fast`); the ids of
repeated pieces come from the cache. Natural text repeats its words, so most of the slow part of
`tokenizers` (its pre-tokenizer tracks every character's offsets) is skipped, and the ids are
exactly those of encoding the whole text. Whole-word masking needs offsets: it encodes directly.

With more than one batch the batches go to `workers` processes (one `tokenizers` thread each, so
the cores are not oversubscribed), at most `2 × workers` in flight, and come back in order:
memory stays bounded, the shards are the same as in one process, and reading and cleaning the
next batch overlaps the encoding.

This module imports neither torch nor the rest of lmforge's training code: a worker process
starts in a fraction of a second.
"""

import itertools
import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from lmforge.data.sentence_split import load_jieba, split_sentences, word_start_flags


@dataclass(frozen=True, slots=True)
class EncodeSpec:
    """What a worker needs to encode like the main process: the tokenizer and the layout."""

    tokenizer_json: str
    sentences: bool  # wordpiece: encode sentence by sentence and record their spans
    separator: int  # <|endoftext|> or [SEP], put before each document that does not continue
    segmenter: str = "none"  # "jieba": also each token's word-start flag


@dataclass(frozen=True, slots=True)
class DocumentText:
    """A cleaned document as the encoder sees it (see `lmforge.data.readers.Document`)."""

    text: str
    continued: bool = False
    joiner: str = ""


@dataclass(slots=True)
class EncodedDocument:
    """One document's tokens: the separator first unless it continues the previous document."""

    tokens: np.ndarray  # uint32
    continued: bool = False  # the document goes on from the previous one
    spans: np.ndarray | None = None  # (n, 2) int64 sentence [start, end) offsets (wordpiece)
    starts: np.ndarray | None = None  # uint8 word-start flag per token (--segmenter)


def _fast(backend: HFTokenizer, texts: list[str]) -> list[np.ndarray]:
    """uint32 ids of each text, without offsets when this `tokenizers` can skip them."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]


# A piece is a run of whitespace and the run of other characters after it, so pieces meet where
# a character that is not whitespace (to Python, hence not to `tokenizers` either) is followed by
# whitespace. GPT-2's split pattern (byte-level BPE), BERT's pre-tokenizer and the char
# tokenizer all cut there, and nothing they do on one side looks past it, so encoding the pieces
# one by one gives the ids of encoding the whole text. Python alone counts \x1c-\x1f as
# whitespace: a text holding one is encoded whole.
_PIECE = re.compile(r"\s*\S+|\s+")
_PYTHON_ONLY_SPACE = re.compile(r"[\x1c-\x1f]")
_CUTS_AT_WHITESPACE = (
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
    {"type": "BertPreTokenizer"},
    {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated"},
)
CACHE_LIMIT = 1_000_000  # distinct pieces kept before the cache starts afresh


def cuts_at_whitespace(config: dict[str, Any]) -> bool:
    """Whether a tokenizer (its JSON) is one whose pieces may be encoded apart: a pre-tokenizer
    known to cut where pieces meet, and special tokens without whitespace or stripping."""
    pre = config.get("pre_tokenizer") or {}
    known = any(all(pre.get(k) == v for k, v in rule.items()) for rule in _CUTS_AT_WHITESPACE)
    specials_plain = all(
        not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
        and not any(c.isspace() for c in t["content"])
        for t in config.get("added_tokens", [])
    )
    return known and specials_plain


class PieceEncoder:
    """Encodes texts through a cache of the ids of their distinct pieces (see `_PIECE`).

    With a normaliser (NFKC, BERT's lowercasing), each text is normalised whole first and the
    pieces of the result are encoded without it; a text holding a special token's text is then
    encoded directly, since tokenizers match special tokens before normalising.
    """

    def __init__(self, tokenizer_json: str) -> None:
        config = json.loads(tokenizer_json)
        self.backend = HFTokenizer.from_str(tokenizer_json)
        self.cacheable = cuts_at_whitespace(config)
        self.normalizer = self.backend.normalizer
        self.bare = HFTokenizer.from_str(tokenizer_json)
        self.bare.normalizer = None
        self.specials = [t["content"] for t in config.get("added_tokens", [])]
        self._clear_cache()

    def _clear_cache(self) -> None:
        self.index: dict[str, int] = {}  # piece -> its number in the cache
        self._ids = np.zeros(0, np.uint32)  # every cached piece's ids, one after another
        self._starts = np.zeros(0, np.int64)  # where each cached piece's ids begin in _ids
        self._lengths = np.zeros(0, np.int64)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """uint32 ids of each text, as `tokenizers` encodes it (no special tokens added)."""
        if not self.cacheable:
            return _fast(self.backend, texts)
        direct = [i for i, t in enumerate(texts) if self._encode_whole(t)]
        out: list[np.ndarray | None] = [None] * len(texts)
        for i, ids in zip(direct, _fast(self.backend, [texts[i] for i in direct]), strict=True):
            out[i] = ids
        rest = [i for i, ids in enumerate(out) if ids is None]
        for i, ids in zip(rest, self._encode_pieces([texts[i] for i in rest]), strict=True):
            out[i] = ids
        return out  # type: ignore[return-value]

    def _encode_whole(self, text: str) -> bool:
        return bool(_PYTHON_ONLY_SPACE.search(text)) or (
            self.normalizer is not None and any(s in text for s in self.specials)
        )

    def _encode_pieces(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        if self.normalizer is not None:
            texts = [self.normalizer.normalize_str(t) for t in texts]
        pieces = [_PIECE.findall(t) for t in texts]
        if len(self.index) > CACHE_LIMIT:
            self._clear_cache()  # start afresh: memory stays bounded
        self._add(set(itertools.chain.from_iterable(pieces)).difference(self.index))
        lookup = self.index.__getitem__
        which = np.fromiter(map(lookup, itertools.chain.from_iterable(pieces)), np.int64)
        lengths = self._lengths[which]
        ends = np.cumsum(lengths)
        # position k of the output copies _ids[start of its piece + its place in the piece]
        shift = np.repeat(self._starts[which] - (ends - lengths), lengths)
        ids = self._ids[shift + np.arange(ends[-1] if len(ends) else 0)]
        text_ends = np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces)))
        token_ends = np.concatenate([[0], ends])[text_ends]  # where each text's ids end
        return np.split(ids, token_ends[:-1])

    def _add(self, new_pieces: set[str]) -> None:
        """Encode pieces not seen before and append their ids to the cache."""
        if not new_pieces:
            return
        ordered = list(new_pieces)
        encoded = _fast(self.bare, ordered)
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        starts = len(self._ids) + np.cumsum(lengths) - lengths
        self._starts = np.concatenate([self._starts, starts])
        self._lengths = np.concatenate([self._lengths, lengths])
        self._ids = np.concatenate([self._ids, *encoded])
        first = len(self.index)
        self.index.update(zip(ordered, range(first, first + len(ordered)), strict=True))


@lru_cache(maxsize=2)
def _encoder(tokenizer_json: str) -> PieceEncoder:
    """The encoder of a tokenizer, built once per process (a cache, keyed by its JSON)."""
    return PieceEncoder(tokenizer_json)


def encode_batch(spec: EncodeSpec, documents: list[DocumentText]) -> list[EncodedDocument]:
    """Encode a batch of documents (in whichever process calls it)."""
    encoder = _encoder(spec.tokenizer_json)
    if spec.sentences:
        return _encode_sentences(spec, encoder, documents)
    texts = [d.joiner + d.text if d.continued else d.text for d in documents]
    head = np.array([spec.separator], dtype=np.uint32)
    return [
        EncodedDocument(ids if doc.continued else np.concatenate([head, ids]), doc.continued)
        for doc, ids in zip(documents, encoder.encode(texts), strict=True)
    ]


def _encode_sentences(
    spec: EncodeSpec, encoder: PieceEncoder, documents: list[DocumentText]
) -> list[EncodedDocument]:
    """Sentence by sentence; with a segmenter (jieba) also each token's word-start flag."""
    sentences = [split_sentences(d.text) for d in documents]
    flat = [s for doc in sentences for s in doc]
    if spec.segmenter == "none":
        encoded = iter([(ids, None) for ids in encoder.encode(flat)])
    else:
        segment = load_jieba()
        encodings = encoder.backend.encode_batch(flat, add_special_tokens=False)
        encoded = iter(
            [
                (np.asarray(e.ids, dtype=np.uint32), word_start_flags(segment, text, e.offsets))
                for text, e in zip(flat, encodings, strict=True)
            ]
        )
    out = []
    for doc, texts in zip(documents, sentences, strict=True):
        pieces = [pair for pair in (next(encoded) for _ in texts) if len(pair[0])]
        head = [] if doc.continued else [spec.separator]
        tokens = np.concatenate([np.array(head, np.uint32), *(ids for ids, _ in pieces)])
        lengths = np.array([len(ids) for ids, _ in pieces], dtype=np.int64)
        ends = len(head) + np.cumsum(lengths)
        spans = np.stack([ends - lengths, ends], axis=1)
        starts = None
        if spec.segmenter != "none":  # the separator starts a word of its own
            flags = [np.ones(len(head), np.uint8), *(f for _, f in pieces)]
            starts = np.concatenate(flags).astype(np.uint8)
        out.append(EncodedDocument(tokens, doc.continued, spans, starts))
    return out


def _one_thread_worker() -> None:
    """Each worker encodes with one `tokenizers` thread: the processes are the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_batches(
    spec: EncodeSpec, batches: Iterable[list[DocumentText]], workers: int
) -> Iterator[list[EncodedDocument]]:
    """Each batch's encoded documents, in order.

    A single batch (or workers <= 1) is encoded here, with `tokenizers`' own threads; from the
    second batch on, `workers` processes encode them, at most 2 × workers batches in flight.
    """
    batches = iter(batches)
    first = list(itertools.islice(batches, 2))
    if workers <= 1 or len(first) < 2:
        for batch in itertools.chain(first, batches):
            yield encode_batch(spec, batch)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_worker)
    pending: deque[Future[list[EncodedDocument]]] = deque()
    try:
        for batch in itertools.chain(first, batches):
            pending.append(pool.submit(encode_batch, spec, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_texts(tokenizer_json: str, texts: list[str], batch_chars: int, workers: int) -> int:
    """Encode texts as `prepare` would (bpe or char layout); the number of tokens. For timing."""
    spec = EncodeSpec(tokenizer_json, sentences=False, separator=0)
    batches = document_batches((DocumentText(t) for t in texts), batch_chars)
    return sum(len(d.tokens) for batch in encode_batches(spec, batches, workers) for d in batch)


def document_batches(
    documents: Iterable[DocumentText], max_chars: int
) -> Iterator[list[DocumentText]]:
    """Consecutive documents grouped until a group holds at least max_chars characters."""
    batch: list[DocumentText] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
