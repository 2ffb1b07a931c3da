"""Labelled text for sequence classification: read CSV / TSV / JSONL, map labels to class ids,
encode for a BERT or a GPT body, and build dynamically padded batches.

Input layouts, chosen by extension:
- `.csv`: a header row, then rows with standard CSV quoting (the `csv` module).
- `.tsv`: as GLUE ships it: a header row, fields split on tabs and nothing else, so quote
  characters are text (`"quoted"` keeps its quotes).
- `.jsonl` / `.json`: one JSON object per line.
Every field is stripped of surrounding whitespace.

Encoding: a BERT reads `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (token types 0, then 1 from
b), as in pretraining. A GPT reads `a <|endoftext|>` or `a <|endoftext|> b <|endoftext|>` (the
tokenizer's document separator): the classifier reads the last token, and ending every example
with the same token gives it one fixed position whose job is to summarise, instead of whatever
word happens to end the text; in a pair the separator also marks where b starts.
"""

import csv
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import (
    RunConfig,
    read_config_file,
)
from lmforge.data.batches import IGNORE_INDEX, Batch, step_generator
from lmforge.data.readers import json_line
from lmforge.data.sentences import truncated_lengths
from lmforge.errors import CheckpointError, ConfigError, DataError, LMForgeError
from lmforge.rundir.files import write_text_atomic
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EPOCH_SEED_KEY = 2  # shuffled epochs draw from step_generator(seed, 2, epoch)
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Example:
    """One input: a text, an optional second text (pair tasks) and its label as read."""

    text: str
    pair: str | None = None
    label: str | None = None  # None when the file has no label column (prediction)


def read_examples(
    path: str | Path,
    text_column: str,
    label_column: str | None = None,
    pair_column: str | None = None,
    split: str = "train",
) -> list[Example]:
    """Examples from a .csv, .tsv or .jsonl file; split names the file in error messages.

    Integer labels in JSON are read as their decimal strings, so "1" and 1 are one label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{split} file not found: {path}")
    columns = [c for c in (text_column, pair_column, label_column) if c is not None]
    examples = []
    for where, row in _rows(path, columns):
        label = None if label_column is None else _label(row[label_column], where)
        texts = [_text(row[c], where, c) for c in (text_column, pair_column) if c is not None]
        examples.append(Example(texts[0], texts[1] if pair_column else None, label))
    if not examples:
        raise DataError(f"the {split} split ({path}) has no examples")
    return examples


def _rows(path: Path, columns: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location for messages, row) pairs; checks that every wanted column exists."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _utf8_only(path, _jsonl_rows(path, columns))
    if suffix in (".csv", ".tsv"):
        return _utf8_only(path, _table_rows(path, columns, tsv=suffix == ".tsv"))
    raise DataError(
        f"{path}: unknown file type {path.suffix or '(none)'!r}; use .csv, .tsv or .jsonl"
    )


def _utf8_only(path: Path, rows: Iterator[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """rows, with a file that is not UTF-8 reported as a DataError instead of a decode error."""
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def _table_rows(path: Path, columns: list[str], tsv: bool) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if tsv:  # GLUE: tabs only, quotes are text
            lines = (line.rstrip("\r\n") for line in handle)
            rows: Iterator[list[str]] = (line.split("\t") for line in lines)
        else:
            rows = csv.reader(handle, strict=True)
        try:
            header = [name.strip() for name in next(rows, [])]
            _check_columns(path, columns, header)
            for number, fields in enumerate(rows, start=2):
                if not any(field.strip() for field in fields):
                    continue  # blank line
                where = f"{path}:{getattr(rows, 'line_num', number)}"
                if len(fields) != len(header):
                    raise DataError(
                        f"{where}: {len(fields)} fields where the header has {len(header)}"
                    )
                yield where, dict(zip(header, (f.strip() for f in fields), strict=True))
        except csv.Error as exc:
            raise DataError(f"{path}: malformed CSV: {exc}") from None


def _check_columns(where: str | Path, wanted: list[str], found: list[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(
            f"{where}: no column {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(found) if any(found) else '(none: the file is empty)'}"
        )


def _jsonl_rows(path: Path, columns: list[str]) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = json_line(line, where)
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            _check_columns(where, columns, list(row))
            yield where, row


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {column!r} must be a string, got {value!r}")
    return value.strip()


def _label(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: a label must be a non-empty string or an integer, got {value!r}")
    return value.strip()


def build_label_map(examples: Sequence[Example]) -> list[str]:
    """The class names in class-id order: sorted, numerically when every label is an integer."""
    names = {e.label for e in examples if e.label is not None}
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 labels, the training split has {names}")
    if all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def label_ids(examples: Sequence[Example], labels: Sequence[str], split: str) -> list[int]:
    """Class ids of examples' labels; a label the label map lacks is a DataError naming it."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({str(e.label) for e in examples if e.label not in index})
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (" …" if len(unknown) > 5 else "")
        raise DataError(
            f"the {split} split has label(s) {shown} that the training split lacks "
            f"(training labels: {', '.join(labels)}); fix the labels or add such examples to "
            "the training data"
        )
    return [index[e.label] for e in examples]


def save_label_map(labels: Sequence[str], path: str | Path) -> None:
    """Write `{"labels": [name of class 0, name of class 1, ...]}` atomically."""
    text = json.dumps({"labels": list(labels)}, indent=2, ensure_ascii=False)
    write_text_atomic(Path(path), text + "\n")


def load_label_map(path: str | Path) -> list[str]:
    """Read the class names written by save_label_map."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read the label map {path}: {exc}") from None
    if (
        not isinstance(labels, list)
        or not all(isinstance(name, str) for name in labels)
        or len(set(labels)) != len(labels)
    ):
        raise CheckpointError(f"{path}: 'labels' must be a list of distinct strings")
    return labels


@dataclass(frozen=True, slots=True)
class EncodedExamples:
    """Token ids ready for batching, at most max_length per example."""

    ids: list[list[int]]
    token_types: list[list[int]]
    labels: list[int] | None  # class ids; None when the examples have no labels
    pad_id: int
    max_length: int
    truncated: int  # how many examples lost tokens to max_length

    def __len__(self) -> int:
        return len(self.ids)

    def truncation_note(self) -> str | None:
        """ "N of M examples truncated to L tokens", or None when none were."""
        if not self.truncated:
            return None
        return f"{self.truncated} of {len(self)} examples truncated to {self.max_length} tokens"


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    arch: str,
    max_length: int,
    labels: Sequence[str] | None = None,
    split: str = "train",
) -> EncodedExamples:
    """Encode examples for a `bert` or `gpt` body (see the module docstring for the layouts).

    Texts are cut from the end to fit max_length (the model's block_size); in a pair the
    longer text loses tokens first, as in BERT. With labels (the label map), labels are mapped
    to class ids.
    """
    start, middle, end, pad_id = _specials(tokenizer, arch)
    pairs = any(e.pair is not None for e in examples)
    specials = len(start) + len(end) + (len(middle) if pairs else 0)
    budget = max_length - specials
    if budget < (2 if pairs else 1):
        raise DataError(
            f"max_length {max_length} is too short for {arch} classification inputs "
            f"(at least {specials + (2 if pairs else 1)} tokens)"
        )
    first = tokenizer.encode_batch([e.text for e in examples])
    second = tokenizer.encode_batch([e.pair or "" for e in examples]) if pairs else None
    a_len = np.array([len(a) for a in first], dtype=np.int64)
    b_len = np.array([len(b) for b in second] if second is not None else np.zeros_like(a_len))
    keep_a, keep_b = truncated_lengths(a_len, b_len, budget)
    ids, types = [], []
    for i, a in enumerate(first):
        head = [*start, *a[: keep_a[i]], *(middle if pairs else end)]
        tail = [*second[i][: keep_b[i]], *end] if second is not None else []
        ids.append(head + tail)
        types.append([0] * len(head) + [1] * len(tail))
    truncated = int(((keep_a < a_len) | (keep_b < b_len)).sum())
    class_ids = None if labels is None else label_ids(examples, labels, split)
    return EncodedExamples(ids, types, class_ids, pad_id, max_length, truncated)


def _specials(tokenizer: Tokenizer, arch: str) -> tuple[list[int], list[int], list[int], int]:
    """(tokens before a, between a and b, after the last text, pad id) for the architecture."""
    if arch == "bert":
        cls_id, sep_id, pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        if cls_id is None or sep_id is None or pad_id is None:
            raise DataError(
                f"this {tokenizer.kind} tokenizer lacks [CLS], [SEP] or [PAD], which a BERT "
                "classifier needs; fine-tune a BERT whose data was prepared with --tokenizer "
                "wordpiece"
            )
        return [cls_id], [sep_id], [sep_id], pad_id
    if arch == "gpt":
        end = tokenizer.separator_id
        return [], [end], [end], 0 if tokenizer.pad_id is None else tokenizer.pad_id
    raise DataError(f"unknown architecture {arch!r}; use 'bert' or 'gpt'")


def pad_batch(encoded: EncodedExamples, rows: Sequence[int]) -> Batch:
    """Examples `rows` right-padded with pad_id to their longest; targets all -100."""
    lengths = np.array([len(encoded.ids[r]) for r in rows])
    inputs = np.full((len(rows), lengths.max()), encoded.pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros_like(inputs)
    for i, r in enumerate(rows):
        inputs[i, : lengths[i]] = encoded.ids[r]
        types[i, : lengths[i]] = encoded.token_types[r]
    inputs_t = torch.from_numpy(inputs)
    labels = None
    if encoded.labels is not None:
        labels = torch.tensor([encoded.labels[r] for r in rows], dtype=torch.long)
    return Batch(
        inputs=inputs_t,
        targets=torch.full_like(inputs_t, IGNORE_INDEX),
        token_types=torch.from_numpy(types),
        attention_mask=torch.from_numpy(np.arange(inputs.shape[1]) < lengths[:, None]),
        labels=labels,
    )


def classification_batches(
    encoded: EncodedExamples,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = False,
) -> Iterator[Batch]:
    """One pass over the examples in batches (the last may be smaller), each padded to its
    longest row; in file order, or shuffled by generator when shuffle is set."""
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a torch.Generator, so the order is reproducible")
    n = len(encoded)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield pad_batch(encoded, order[start : start + batch_size].tolist())


class EpochBatches:
    """Training batches by (step, micro): shuffled epochs, each order fixed by (seed, epoch).

    Micro-batch number g = step · grad_accum + micro is batch g mod E of epoch g // E, where
    E = batches_per_epoch = len // batch_size (at least 1): the last partial batch of each
    epoch's order is left out, so every batch has batch_size rows, and it differs per epoch.
    Depending only on (seed, step, micro), a resumed run sees the batches an uninterrupted one
    would.

    With length_grouping = W > 1, each epoch's shuffled order is cut into windows of W batches;
    a window's examples are sorted by length and cut into batches, and the batches of the whole
    epoch are shuffled again. Batches then hold examples of similar length (little padding, so
    a step costs less), while which examples meet in a window still changes every epoch.
    """

    def __init__(
        self,
        encoded: EncodedExamples,
        batch_size: int,
        seed: int,
        grad_accum: int = 1,
        length_grouping: int = 0,
    ) -> None:
        self.encoded, self.batch_size, self.seed = encoded, batch_size, seed
        self.grad_accum, self.length_grouping = grad_accum, length_grouping
        self.batches_per_epoch = max(1, len(encoded) // batch_size)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) last used

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps that cover `epochs` passes over the data (at least 1)."""
        return max(1, -(-round(epochs * self.batches_per_epoch) // self.grad_accum))

    def order(self, epoch: int) -> torch.Tensor:
        """The order in which that epoch reads the examples (batch k: rows k·B to (k+1)·B)."""
        if self._order is None or self._order[0] != epoch:
            generator = step_generator(self.seed, EPOCH_SEED_KEY, epoch)
            order = torch.randperm(len(self.encoded), generator=generator)
            if self.length_grouping > 1 and len(order) >= self.batch_size:
                order = self._grouped(order, generator)
            self._order = (epoch, order)
        return self._order[1]

    def _grouped(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """order with each window of length_grouping batches sorted by length, then whole
        batches shuffled; the rows past the last full batch stay last (left out)."""
        size = min(len(order), self.batches_per_epoch * self.batch_size)
        lengths = torch.tensor([len(self.encoded.ids[i]) for i in order[:size].tolist()])
        window = self.length_grouping * self.batch_size
        pieces = []
        for start in range(0, size, window):
            rows = order[start : start + window]
            pieces.append(rows[torch.sort(lengths[start : start + window], stable=True).indices])
        batches = torch.cat(pieces).view(-1, self.batch_size)
        shuffled = batches[torch.randperm(len(batches), generator=generator)]
        return torch.cat([shuffled.flatten(), order[size:]])

    def __call__(self, step: int, micro: int) -> Batch:
        epoch, k = divmod(step * self.grad_accum + micro, self.batches_per_epoch)
        rows = self.order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        return pad_batch(self.encoded, rows.tolist())


@dataclass(frozen=True, slots=True)
class ClassificationData:
    """The label map and both splits, encoded for the base model."""

    labels: list[str]
    train: EncodedExamples
    valid: EncodedExamples


def _read(cfg: RunConfig, file: str, split: str, with_labels: bool = True) -> list[Example]:
    ft = cfg.finetune
    return read_examples(
        file,
        ft.text_column,
        ft.label_column if with_labels else None,
        ft.text_pair_column or None,
        split=split,
    )


def load_data(cfg: RunConfig, tokenizer: Tokenizer) -> ClassificationData:
    """Read, label-map and encode the train and valid files; warn about truncated texts."""
    if not cfg.finetune.train_file or not cfg.finetune.valid_file:
        raise LMForgeError("fine-tuning needs --train FILE and --valid FILE")
    train = _read(cfg, cfg.finetune.train_file, "train")
    valid = _read(cfg, cfg.finetune.valid_file, "valid")
    labels = build_label_map(train)
    arch, length = cfg.model.arch, cfg.model.block_size
    encoded = [
        encode_examples(examples, tokenizer, arch, length, labels, split)
        for examples, split in ((train, "train"), (valid, "valid"))
    ]
    for split, enc in zip(("train", "valid"), encoded, strict=True):
        if note := enc.truncation_note():
            log.warning("warning: %s split: %s (model.block_size)", split, note)
    return ClassificationData(labels, *encoded)


def balanced_class_weights(class_ids: Iterable[int], n_classes: int) -> list[float]:
    """w_c = n / (K · n_c), scikit-learn's "balanced": every class weighs the same in total."""
    counts = torch.bincount(torch.as_tensor(list(class_ids)), minlength=n_classes).double()
    return (counts.sum() / (n_classes * counts.clamp(min=1))).tolist()


TASK_COLUMNS = ("text_column", "text_pair_column", "label_column")


TASK_KEYS = ("train_file", "valid_file", *TASK_COLUMNS)


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    labels: list[str]
    train: EncodedExamples
    valid: EncodedExamples


def read_task_spec(name: str, path: Path) -> dict[str, str]:
    """A task's files and columns from its YAML/JSON/TOML file (finetune.* names)."""
    spec = read_config_file(path)
    unknown = sorted(set(spec) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"task {name} ({path}): unknown key {unknown[0]!r}; use {TASK_KEYS}")
    if "train_file" not in spec or "valid_file" not in spec:
        raise ConfigError(f"task {name} ({path}) needs train_file and valid_file")
    base = path.parent  # relative paths are relative to the task file
    for key in ("train_file", "valid_file"):
        spec[key] = str(base / spec[key]) if not Path(spec[key]).is_absolute() else spec[key]
    return {"text_column": "sentence", "label_column": "label", "text_pair_column": "", **spec}


def load_task(name: str, spec: dict[str, str], cfg: RunConfig, tokenizer: Tokenizer) -> Task:
    pair = spec["text_pair_column"] or None
    examples = {
        split: read_examples(
            spec[f"{split}_file"], spec["text_column"], spec["label_column"], pair, split
        )
        for split in ("train", "valid")
    }
    labels = build_label_map(examples["train"])
    encode = lambda split: encode_examples(  # noqa: E731
        examples[split], tokenizer, cfg.model.arch, cfg.model.block_size, labels, split
    )
    return Task(name, labels, encode("train"), encode("valid"))


def task_probabilities(sizes: list[int], temperature: float) -> torch.Tensor:
    """p_i ∝ n_i^(1/T)."""
    weights = torch.tensor(sizes, dtype=torch.float64) ** (1.0 / temperature)
    return weights / weights.sum()
