"""Token shards: documents encoded in parallel (`lmforge.data.token_encoding`) into
uint16/uint32 `.bin` memmaps + `meta.json`.

With a wordpiece tokenizer each split also gets a sentence index (see `lmforge.data.sentences`)
for BERT's next-sentence prediction; bpe and char shards are written exactly as before. With a
segmenter (`prepare --segmenter jieba`) each shard `{split}_NNN.bin` also gets a uint8 twin
`{split}_NNN.words.bin`, named in its meta.json file entry as "word_starts": 1 where a token
begins a segmented word, for whole-word masking of Chinese.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.corpus import Document
from lmforge.data.sentence_split import SEGMENTERS, load_jieba
from lmforge.data.sentences import FlaggedTokens, SentenceCorpus, SentenceIndexWriter
from lmforge.data.token_encoding import (
    DocumentText,
    EncodeSpec,
    default_workers,
    document_batches,
    encode_batches,
)
from lmforge.errors import DataError
from lmforge.rundir import files
from lmforge.rundir.files import write_text_atomic, writing
from lmforge.tokenizer import Tokenizer

META_FILE = "meta.json"
FORMAT = "lmforge-shards/1"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in 16 bits, uint32 once the vocabulary exceeds 65,535."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


@dataclass
class _Piece:
    """One encoded document (or chunk of one) on its way into a split."""

    tokens: np.ndarray  # uint32, the separator first unless the chunk continues a document
    spans: np.ndarray | None  # (n, 2) sentence [start, end) offsets into tokens (wordpiece)
    continued: bool = False
    new_document: bool = True  # starts a document in the sentence index of its split
    starts: np.ndarray | None = None  # uint8 word-start flag of each token (--segmenter)

    def cut(self, at: int) -> tuple["_Piece", "_Piece"]:
        """Split at token `at`; a sentence that straddles the cut becomes two."""
        head = _Piece(self.tokens[:at], None, self.continued, self.new_document)
        tail = _Piece(self.tokens[at:], None, True, True)
        if self.starts is not None:
            head.starts, tail.starts = self.starts[:at], self.starts[at:]
        if self.spans is not None:
            head.spans = np.minimum(self.spans[self.spans[:, 0] < at], at)
            tail.spans = np.maximum(self.spans[self.spans[:, 1] > at], at) - at
        return head, tail


def _append_bytes(path: Path, values: np.ndarray, dtype: Any = np.uint8) -> None:
    """Append values as dtype to a shard file; a full disk is a DiskError naming the file."""
    with writing(path), path.open("ab") as handle:
        handle.write(values.astype(dtype).tobytes())


@dataclass
class _SplitWriter:
    """Appends token arrays to numbered shard files of at most shard_tokens tokens."""

    directory: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    sentences: SentenceIndexWriter | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0

    def write(self, piece: _Piece) -> None:
        if self.sentences is not None and piece.spans is not None:
            offset = sum(f["tokens"] for f in self.files)
            self.sentences.add(piece.spans + offset, piece.new_document)
        tokens, starts = piece.tokens, piece.starts
        while len(tokens):
            if not self.files or self.files[-1]["tokens"] >= self.shard_tokens:
                entry = {"name": f"{self.split}_{len(self.files):03d}.bin", "tokens": 0}
                if starts is not None:
                    entry["word_starts"] = f"{self.split}_{len(self.files):03d}.words.bin"
                    (self.directory / entry["word_starts"]).write_bytes(b"")
                self.files.append(entry)
            room = self.shard_tokens - self.files[-1]["tokens"]
            _append_bytes(self.directory / self.files[-1]["name"], tokens[:room], self.dtype)
            if starts is not None:
                _append_bytes(self.directory / self.files[-1]["word_starts"], starts[:room])
                starts = starts[room:]
            self.files[-1]["tokens"] += len(tokens[:room])
            tokens = tokens[room:]

    def summary(self) -> dict[str, Any]:
        summary = {
            "files": self.files,
            "tokens": sum(f["tokens"] for f in self.files),
            "documents": self.documents,
        }
        if self.sentences is not None:
            summary["sentences"] = self.sentences.close()
        return summary


def _encode_documents(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    batch_chars: int,
    segmenter: str,
    workers: int,
) -> Iterator[_Piece]:
    """Each document's tokens, preceded by the separator unless it continues the previous one.

    The separator is <|endoftext|> (bpe, char) or [SEP] (wordpiece). A wordpiece tokenizer
    encodes the text sentence by sentence and records where each sentence lies. Batches of
    batch_chars characters are encoded by `workers` processes (see `token_encoding`).
    """
    spec = EncodeSpec(
        tokenizer.backend.to_str(),
        sentences=tokenizer.kind == "wordpiece",
        separator=tokenizer.separator_id,
        segmenter=segmenter,
    )
    texts = (DocumentText(d.text, d.continued, d.joiner) for d in documents)
    for batch in encode_batches(spec, document_batches(texts, batch_chars), workers):
        for encoded in batch:
            yield _Piece(encoded.tokens, encoded.spans, encoded.continued, starts=encoded.starts)


def write_shards(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    out_dir: Path,
    val_fraction: float = 0.1,
    shard_tokens: int = 100_000_000,
    batch_chars: int = 4_000_000,
    segmenter: str = "none",
    workers: int = 0,
) -> dict[str, Any]:
    """Encode documents into train/val shards in out_dir (split by document) and write meta.json.

    Every round(1/val_fraction)-th document goes to val; with too few documents for that, the last
    document (or the tail of a lone document) becomes the validation split. segmenter "jieba"
    (wordpiece only) also writes each shard's word-start flags for whole-word masking.
    A full disk or an I/O error is a DiskError; the caller removes out_dir's partial files.
    """
    with writing(out_dir):  # the sentence index writes too
        return _write_shards(
            documents,
            tokenizer,
            out_dir,
            val_fraction,
            shard_tokens,
            batch_chars,
            segmenter,
            workers,
        )


def _write_shards(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    out_dir: Path,
    val_fraction: float,
    shard_tokens: int,
    batch_chars: int,
    segmenter: str,
    workers: int,
) -> dict[str, Any]:
    dtype = token_dtype(tokenizer.vocab_size)
    sentences = tokenizer.kind == "wordpiece"
    if segmenter not in SEGMENTERS:
        raise DataError(f"unknown --segmenter {segmenter!r}; use none or jieba")
    if segmenter != "none" and not sentences:
        raise DataError("--segmenter marks words for BERT's whole-word masking: use wordpiece")
    if segmenter == "jieba":
        load_jieba()  # fail here, not in a worker, when jieba is missing
    writers = {
        s: _SplitWriter(
            out_dir, s, dtype, shard_tokens, SentenceIndexWriter(out_dir, s) if sentences else None
        )
        for s in SPLITS
    }
    pending: _Piece | None = None  # held back one step so the last document can go to val
    previous = None  # the split the previous piece went to
    pieces = _encode_documents(
        documents, tokenizer, batch_chars, segmenter, workers or default_workers()
    )
    for index, piece in enumerate(pieces):
        if pending is not None:
            writers["train"].write(pending)
        pending = None
        split = "train"
        if val_fraction > 0 and int((index + 1) * val_fraction) > int(index * val_fraction):
            split = "val"
        # a chunk continues its document only where the previous chunk went too
        piece.new_document = not piece.continued or previous != split
        previous = split
        writers[split].documents += 1
        if split == "val":
            writers["val"].write(piece)
        else:
            pending = piece
    if pending is not None:
        _write_last_document(writers, pending, val_fraction)
    meta = {
        "format": FORMAT,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "eot_id": tokenizer.special_id(tokenizer.end_token) if tokenizer.end_token else None,
        "tokenizer_kind": tokenizer.kind,
        "tokenizer_sha256": tokenizer.sha256(),
        "val_fraction": val_fraction,
        "splits": {s: w.summary() for s, w in writers.items()},
    }
    if sentences:
        meta["separator_id"] = tokenizer.separator_id
    if segmenter != "none":
        meta["segmenter"] = segmenter
    write_text_atomic(out_dir / META_FILE, json.dumps(meta, indent=2))
    return meta


def _write_last_document(
    writers: dict[str, _SplitWriter], piece: _Piece, val_fraction: float
) -> None:
    if val_fraction <= 0 or writers["val"].documents > 0:
        writers["train"].write(piece)
    elif writers["train"].documents > 1:  # move the whole last document to val
        writers["train"].documents -= 1
        writers["val"].documents += 1
        piece.new_document = True
        writers["val"].write(piece)
    else:  # a lone document: its tail becomes val
        tokens = piece.tokens
        head, tail = piece.cut(len(tokens) - max(1, int(len(tokens) * val_fraction)))
        writers["train"].write(head)
        writers["val"].write(tail)
        writers["val"].documents = 1


def replace_directory(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished tmp_dir into place at out_dir, replacing whatever was there, with the
    mode the umask gives a new directory (see lmforge.rundir.files.replace_directory)."""
    files.replace_directory(tmp_dir, out_dir)


class TokenShards:
    """Read-only view of a prepared data directory: memmapped token arrays per split."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META_FILE
        if not meta_path.is_file():
            raise DataError(
                f"{self.directory} is not a prepared data directory (no {META_FILE}); "
                "run `lmforge prepare --input ... --out DIR` first"
            )
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.arrays = {s: self._open_split(s) for s in SPLITS}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{meta_path} is corrupt ({exc}); prepare the data again") from None

    def _open_split(self, split: str) -> list[np.ndarray]:
        dtype = np.dtype(self.meta["dtype"])
        arrays = []
        for entry in self.meta["splits"][split]["files"]:
            path = self.directory / entry["name"]
            expected = entry["tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise DataError(
                    f"shard {path} is missing or truncated (expected {expected} bytes); "
                    "prepare the data again"
                )
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        return arrays

    @property
    def segmenter(self) -> str:
        """The word segmenter whose word starts the shards carry ("none" if none)."""
        return str(self.meta.get("segmenter", "none"))

    def word_starts(self, split: str) -> list[np.ndarray]:
        """Each shard file's uint8 word-start flags (data prepared with --segmenter)."""
        if self.segmenter == "none":
            raise DataError(f"{self.directory} has no word starts; prepare it with --segmenter")
        flags = []
        for entry, array in zip(
            self.meta["splits"][split]["files"], self.arrays[split], strict=True
        ):
            path = self.directory / str(entry.get("word_starts", ""))
            if (
                not entry.get("word_starts")
                or not path.is_file()
                or path.stat().st_size != len(array)
            ):
                raise DataError(
                    f"word-start flags {path} are missing or truncated (expected {len(array)} "
                    "bytes); prepare the data again"
                )
            flags.append(
                np.memmap(path, dtype=np.uint8, mode="r") if len(array) else np.zeros(0, np.uint8)
            )
        return flags

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def sentences(self, split: str, word_starts: bool = False) -> SentenceCorpus:
        """The split's sentences and documents (data prepared with a wordpiece tokenizer).

        With word_starts, each token comes with its word-start flag packed in (see
        `lmforge.data.sentences.WORD_START_SHIFT`).
        """
        entry = self.meta["splits"][split].get("sentences")
        if entry is None:
            raise DataError(
                f"{self.directory} has no sentence index (it was prepared with a "
                f"{self.meta.get('tokenizer_kind')} tokenizer); BERT pretraining needs data "
                "prepared with --tokenizer wordpiece"
            )
        arrays: list[Any] = self.arrays[split]
        if word_starts:
            flags = self.word_starts(split)
            arrays = [FlaggedTokens(a, f) for a, f in zip(arrays, flags, strict=True)]
        return SentenceCorpus.open(self.directory, entry, arrays)

    def num_tokens(self, split: str) -> int:
        return sum(len(a) for a in self.arrays[split])

    def check_fits(self, split: str, window: int) -> None:
        """Fail clearly when no shard of a split can supply one window of `window` tokens."""
        longest = max((len(a) for a in self.arrays[split]), default=0)
        if longest < window:
            raise DataError(
                f"the {split} split of {self.directory} has {longest} tokens in its largest shard, "
                f"fewer than one window of {window} (model.block_size + 1); use more text or a "
                "smaller model.block_size"
            )

    def sample_windows(
        self, split: str, batch_size: int, window: int, generator: torch.Generator
    ) -> torch.Tensor:
        """batch_size random windows of `window` consecutive tokens, as int64 (B, window)."""
        arrays = [a for a in self.arrays[split] if len(a) >= window]
        starts_room = torch.tensor([len(a) - window + 1 for a in arrays], dtype=torch.float64)
        which = torch.multinomial(starts_room, batch_size, replacement=True, generator=generator)
        offsets = (
            torch.rand(batch_size, generator=generator, dtype=torch.float64) * starts_room[which]
        ).long()
        rows = [
            arrays[w][o : o + window] for w, o in zip(which.tolist(), offsets.tolist(), strict=True)
        ]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def sequential_windows(self, split: str, window: int) -> Iterator[torch.Tensor]:
        """Non-overlapping windows covering a whole split once (each token predicted once)."""
        for array in self.arrays[split]:
            for start in range(0, len(array) - window + 1, window - 1):
                yield torch.from_numpy(array[start : start + window].astype(np.int64))
