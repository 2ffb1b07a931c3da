"""Sentences for BERT's next-sentence prediction: the per-split sentence index that
`write_shards` records for wordpiece data, and the pair sampler that builds NSP examples.

Index format (per split, next to the token shards, described in meta.json):
`{split}_sentences.bin` holds int64 (S, 2): each sentence's [start, end) offsets in the split's
token stream (its shard files concatenated); `{split}_documents.bin` holds int64 (D + 1,): the
index of each document's first sentence, then S. A document's sentences are consecutive in the
stream and every sentence and document is non-empty.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.errors import DataError

IS_NEXT, NOT_NEXT = 0, 1  # NSP labels as in Hugging Face BertForPreTraining

# With `prepare --segmenter jieba`, each token shard has a uint8 twin of word-start flags (1 where
# a token begins a segmented word). A corpus opened with them returns each token id with its flag
# packed at this bit, so the flags travel through `nsp_examples` untouched; `unpack_word_starts`
# takes them off again before masking.
WORD_START_SHIFT = 32


class FlaggedTokens:
    """One shard's token ids with its word-start flags packed in (see WORD_START_SHIFT)."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray) -> None:
        if len(ids) != len(starts):
            raise DataError(f"{len(starts)} word-start flags for {len(ids)} tokens")
        self.ids, self.starts = ids, starts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: slice) -> np.ndarray:
        flags = self.starts[key].astype(np.int64) << WORD_START_SHIFT
        return self.ids[key].astype(np.int64) | flags


def unpack_word_starts(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, starts) from ids with packed word-start flags: starts is (B, T) bool."""
    return ids & ((1 << WORD_START_SHIFT) - 1), (ids >> WORD_START_SHIFT).bool()


class SentenceIndexWriter:
    """Appends one split's sentence spans and document starts to its two index files."""

    def __init__(self, directory: Path, split: str) -> None:
        self.spans_file = f"{split}_sentences.bin"
        self.documents_file = f"{split}_documents.bin"
        self.directory = directory
        self.sentences = 0
        self.documents = 0
        self._in_document = False
        for name in (self.spans_file, self.documents_file):
            (directory / name).write_bytes(b"")

    def add(self, spans: np.ndarray, new_document: bool) -> None:
        """Record sentences (n, 2) given as offsets in the split; new_document starts a document."""
        if new_document:
            self._in_document = False
        if not len(spans):
            return
        if not self._in_document:  # a document starts at its first sentence
            self._append(self.documents_file, np.array([self.sentences]))
            self.documents += 1
            self._in_document = True
        self._append(self.spans_file, spans)
        self.sentences += len(spans)

    def close(self) -> dict[str, Any]:
        """Write the end sentinel and return the split's meta.json entry."""
        self._append(self.documents_file, np.array([self.sentences]))
        return {
            "spans_file": self.spans_file,
            "documents_file": self.documents_file,
            "sentences": self.sentences,
            "documents": self.documents,
        }

    def _append(self, name: str, values: np.ndarray) -> None:
        with (self.directory / name).open("ab") as handle:
            handle.write(np.ascontiguousarray(values, dtype=np.int64).tobytes())


class SentenceCorpus:
    """One split as documents of sentences: token spans over the split's token stream."""

    def __init__(
        self, arrays: Sequence[np.ndarray], spans: np.ndarray, documents: np.ndarray
    ) -> None:
        self.arrays = list(arrays)  # the split's shard files; concatenated they are the stream
        self.spans = spans  # (S, 2) [start, end) token offsets of each sentence
        self.documents = documents  # (D + 1,) first sentence of each document, then S
        self._offsets = np.cumsum([0, *(len(a) for a in self.arrays)])

    @classmethod
    def open(
        cls, directory: Path, entry: dict[str, Any], arrays: Sequence[np.ndarray]
    ) -> "SentenceCorpus":
        """Memory-map the index files a meta.json `sentences` entry names."""
        views = []
        for name, values in (
            ("spans_file", 2 * entry["sentences"]),
            ("documents_file", entry["documents"] + 1),
        ):
            path = directory / entry[name]
            if not path.is_file() or path.stat().st_size != 8 * values:
                raise DataError(
                    f"sentence index {path} is missing or truncated (expected {8 * values} "
                    "bytes); prepare the data again"
                )
            views.append(np.memmap(path, dtype=np.int64, mode="r") if values else np.zeros(0))
        return cls(arrays, views[0].reshape(-1, 2).astype(np.int64, copy=False), views[1])

    @classmethod
    def from_documents(
        cls, documents: Sequence[Sequence[Sequence[int]]], separator: int = 0
    ) -> "SentenceCorpus":
        """An in-memory corpus laid out like the shards: each document after a separator token."""
        stream: list[int] = []
        spans: list[tuple[int, int]] = []
        firsts: list[int] = []
        for sentences in documents:
            stream.append(separator)
            kept = [s for s in sentences if len(s)]
            if kept:
                firsts.append(len(spans))
            for sentence in kept:
                spans.append((len(stream), len(stream) + len(sentence)))
                stream.extend(sentence)
        return cls(
            [np.asarray(stream, dtype=np.int64)],
            np.asarray(spans, dtype=np.int64).reshape(-1, 2),
            np.asarray([*firsts, len(spans)], dtype=np.int64),
        )

    @property
    def num_sentences(self) -> int:
        return len(self.spans)

    @property
    def num_documents(self) -> int:
        return len(self.documents) - 1

    def document_of(self, sentences: np.ndarray) -> np.ndarray:
        """The document index of each sentence index."""
        return np.searchsorted(self.documents, sentences, side="right") - 1

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the split's stream as int64, across shard files if need be."""
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        pieces = []
        while start < end:
            local = start - self._offsets[first]
            piece = self.arrays[first][local : local + end - start]
            pieces.append(piece)
            start += len(piece)
            first += 1
        return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)

    def sentence(self, index: int) -> np.ndarray:
        return self.tokens(*(int(x) for x in self.spans[index]))


def nsp_examples(
    corpus: SentenceCorpus,
    batch_size: int,
    max_seq_len: int,
    generator: torch.Generator,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    nsp: bool = True,
) -> Batch:
    """Unmasked BERT examples, right-padded to the batch's longest sequence (targets all -100).

    With nsp, each row is `[CLS] A [SEP] B [SEP]` (token types 0 then 1) of at most max_seq_len
    tokens: A is whole sentences from a random start sentence, filled up to a random split point
    of the max_seq_len - 3 token budget; B is, with probability 1/2, the sentences that follow A
    (label 0, IsNext), else sentences from a random start in a random other document (label 1,
    NotNext). The longer side is then trimmed one token at a time, from the front or the back at
    random, as in BERT. Without nsp (MLM only), each row is `[CLS] S [SEP]` with S consecutive
    sentences of one document filling max_seq_len (the last one cut), and labels are None.
    """
    if nsp:
        if max_seq_len < 5:
            raise DataError(f"max_seq_len {max_seq_len} is too short for NSP pairs (>= 5)")
        a, b, labels = _sample_pairs(corpus, batch_size, max_seq_len - 3, generator)
        rows = [
            np.concatenate([[cls_id], x, [sep_id], y, [sep_id]]) for x, y in zip(a, b, strict=True)
        ]
        b_starts = [len(x) + 2 for x in a]
    else:
        if max_seq_len < 3:
            raise DataError(f"max_seq_len {max_seq_len} is too short for [CLS] x [SEP] (>= 3)")
        rows = [
            np.concatenate([[cls_id], x, [sep_id]])
            for x in _sample_runs(corpus, batch_size, max_seq_len - 2, generator)
        ]
        b_starts = [len(row) for row in rows]
        labels = None
    return _padded_batch(rows, b_starts, pad_id, labels)


def _uniform_ints(u: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """floor(u * high) for u in [0, 1): a uniform integer in [0, high)."""
    return np.minimum((u * high).astype(np.int64), np.asarray(high) - 1)


def _run_end(
    corpus: SentenceCorpus, first: np.ndarray, target: np.ndarray | int, stop: np.ndarray
) -> np.ndarray:
    """The last sentence of the run from `first` that first holds >= target tokens, at most stop.

    One binary search per row: sentence ends grow along the stream.
    """
    last = np.searchsorted(corpus.spans[:, 1], corpus.spans[first, 0] + target, side="left")
    return np.clip(last, first, stop)


def _run_length(corpus: SentenceCorpus, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    return corpus.spans[last, 1] - corpus.spans[first, 0]


def _sample_pairs(
    corpus: SentenceCorpus, batch_size: int, budget: int, generator: torch.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], torch.Tensor]:
    """Segments A and B (at most budget tokens together) and their NSP labels."""
    docs = corpus.documents
    counts = np.diff(docs)
    pairable = np.concatenate([[0], np.cumsum(np.maximum(counts - 1, 0))])  # starts with a next
    if pairable[-1] == 0 or corpus.num_documents < 2:
        raise DataError(
            "NSP pairs need at least two documents, one of them with two or more sentences; "
            "use more text (or MLM without NSP)"
        )
    u = torch.rand(batch_size, 5, generator=generator, dtype=torch.float64).numpy()
    r = _uniform_ints(u[:, 0], pairable[-1])
    doc = np.searchsorted(pairable, r, side="right") - 1
    a_first = docs[doc] + r - pairable[doc]
    a_target = 1 + _uniform_ints(u[:, 1], budget - 1)  # the random split point, in [1, budget - 1]
    a_last = _run_end(corpus, a_first, a_target, docs[doc + 1] - 2)  # B keeps >= 1 sentence
    a_len = _run_length(corpus, a_first, a_last)

    is_next = u[:, 2] < 0.5
    other = _uniform_ints(u[:, 3], corpus.num_documents - 1)
    other += other >= doc  # uniform over the documents other than A's
    b_first = np.where(is_next, a_last + 1, docs[other] + _uniform_ints(u[:, 4], counts[other]))
    b_stop = np.where(is_next, docs[doc + 1], docs[other + 1]) - 1
    b_last = _run_end(corpus, b_first, np.maximum(budget - a_len, 1), b_stop)
    b_len = _run_length(corpus, b_first, b_last)

    a_keep, b_keep = truncated_lengths(a_len, b_len, budget)
    cut = torch.tensor(np.stack([a_len - a_keep, b_len - b_keep]), dtype=torch.float64)
    front = torch.binomial(cut, torch.full_like(cut, 0.5), generator=generator).long().numpy()
    a_from = corpus.spans[a_first, 0] + front[0]
    b_from = corpus.spans[b_first, 0] + front[1]
    a = [corpus.tokens(s, s + n) for s, n in zip(a_from, a_keep, strict=True)]
    b = [corpus.tokens(s, s + n) for s, n in zip(b_from, b_keep, strict=True)]
    return a, b, torch.from_numpy(np.where(is_next, IS_NEXT, NOT_NEXT))


def truncated_lengths(
    a_len: np.ndarray, b_len: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after BERT's truncation: while a + b > budget, drop a token from the longer side
    (from B on a tie). Closed form: A keeps min(a, max(ceil(budget/2), budget - b)) tokens."""
    over = a_len + b_len > budget
    a_keep = np.minimum(a_len, np.maximum((budget + 1) // 2, budget - b_len))
    return np.where(over, a_keep, a_len), np.where(over, budget - a_keep, b_len)


def _sample_runs(
    corpus: SentenceCorpus, batch_size: int, budget: int, generator: torch.Generator
) -> list[np.ndarray]:
    """Consecutive sentences of one document from a random start sentence, up to budget tokens."""
    if corpus.num_sentences == 0:
        raise DataError("the split has no sentences; use more text")
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()
    first = _uniform_ints(u, corpus.num_sentences)
    stop = corpus.documents[corpus.document_of(first) + 1] - 1
    length = np.minimum(_run_length(corpus, first, _run_end(corpus, first, budget, stop)), budget)
    return [corpus.tokens(s, s + n) for s, n in zip(corpus.spans[first, 0], length, strict=True)]


def _padded_batch(
    rows: list[np.ndarray], b_starts: list[int], pad_id: int, labels: torch.Tensor | None
) -> Batch:
    """Right-pad rows to the longest; token type 1 from b_starts[i] to the end of row i."""
    lengths = np.array([len(row) for row in rows])
    inputs = np.full((len(rows), lengths.max()), pad_id, dtype=np.int64)  # (B, T)
    for i, row in enumerate(rows):
        inputs[i, : len(row)] = row
    position = np.arange(inputs.shape[1])
    attention_mask = position < lengths[:, None]  # (B, T)
    token_types = (position >= np.array(b_starts)[:, None]) & attention_mask
    inputs_t = torch.from_numpy(inputs)
    return Batch(
        inputs=inputs_t,
        targets=torch.full_like(inputs_t, IGNORE_INDEX),
        token_types=torch.from_numpy(token_types.astype(np.int64)),
        attention_mask=torch.from_numpy(attention_mask),
        labels=labels,
    )
