"""Prompt -> completion data: JSONL reading, chat rendering, label masking and packing.

Each JSONL line is {"prompt": ..., "completion": ...} or {"messages": [{"role", "content"}...]}.
A prompt/completion row learns the completion and the end-of-text token after it (which
teaches the model to stop). A messages row is rendered by the run's chat template
(data/chat.py) and learns every assistant answer with its end-of-turn token, nothing else.
Prompt and context labels are -100.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.data.chat import ChatTemplate, check_messages
from lmforge.data.readers import json_line
from lmforge.errors import DataError
from lmforge.rundir.files import read_utf8
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pair:
    """A prompt and the answer to learn; a chat row also keeps its rendered pieces, each
    marked learned or not (every assistant answer), which training uses instead."""

    prompt: str
    completion: str
    segments: tuple[tuple[str, bool], ...] = ()


def chat_pair(messages: list[dict], template: ChatTemplate, where: str) -> Pair:
    """A conversation: trained on every answer; scored on its last answer, given the rest."""
    check_messages(messages, where)
    last = max(i for i, turn in enumerate(messages) if turn["role"] == "assistant")
    prompt = template.render(messages[:last], add_generation_prompt=True)
    segments = tuple(template.segments(messages[: last + 1]))
    return Pair(prompt, messages[last]["content"], segments)


def _pair(line: str, where: str, template: ChatTemplate | None) -> Pair:
    record = json_line(line, where)
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        if template is None:
            raise DataError(f"{where}: messages rows need a chat template, and none was given")
        return chat_pair(record["messages"], template, where)
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(f"{where}: needs string fields prompt and completion (or messages)")
    return Pair(prompt, completion)


def read_pairs(
    path: Path, skip_bad_lines: bool = False, template: ChatTemplate | None = None
) -> list[Pair]:
    """Every example of a JSONL file; a bad line stops with its number unless skipped."""
    lines = read_utf8(path, "examples file").splitlines()
    pairs, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            pairs.append(_pair(line, f"{path}:{number}", template))
        except DataError as exc:
            if not skip_bad_lines:
                raise DataError(f"{exc}; fix the line or pass --skip-bad-lines") from None
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        log.warning("warning: skipped %d bad lines of %s: %s", len(bad), path, shown)
    if not pairs:
        raise DataError(f"{path} holds no examples")
    return pairs


@dataclass(frozen=True, slots=True)
class Encoded:
    """One example as model inputs and targets of equal length (targets -100 on the prompt)."""

    inputs: list[int]
    targets: list[int]


def encode_pair(pair: Pair, tokenizer: Tokenizer, max_len: int) -> tuple[Encoded, bool]:
    """The example's tokens shifted into (inputs, targets): prompt + completion + end-of-text,
    or a chat's pieces, labels on what is learned. An example longer than max_len + 1 tokens
    loses the start of its context (then its end). Returns whether it was truncated."""
    if pair.segments:
        ids, labels = _chat_tokens(pair, tokenizer)
    else:
        prompt = tokenizer.encode(pair.prompt)
        completion = [*tokenizer.encode(pair.completion), tokenizer.eot_id]
        ids, labels = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
    budget = max_len + 1
    truncated = len(ids) > budget
    if truncated:
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0)
        start = max(0, min(first, len(ids) - budget))  # drop context, keep what is learned
        ids, labels = ids[start : start + budget], labels[start : start + budget]
    return Encoded(ids[:-1], labels[1:]), truncated


def _chat_tokens(pair: Pair, tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """A chat's tokens, piece by piece; labels are the tokens of the learned pieces."""
    ids: list[int] = []
    labels: list[int] = []
    for text, learn in pair.segments:
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if learn else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, max_len: int) -> list[Encoded]:
    encoded, truncated = [], 0
    for pair in pairs:
        example, cut = encode_pair(pair, tokenizer, max_len)
        encoded.append(example)
        truncated += cut
    if truncated:
        log.warning(
            "warning: %d of %d examples truncated to %d tokens", truncated, len(pairs), max_len
        )
    return encoded


def pack(examples: list[Encoded], length: int) -> list[list[tuple[int, Encoded]]]:
    """Rows of whole examples that fit `length` tokens, filled first-fit in the given order."""
    rows: list[list[tuple[int, Encoded]]] = []
    room: list[int] = []
    for index, example in enumerate(examples):
        size = len(example.inputs)
        slot = next((r for r, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([])
            room.append(length)
            slot = len(rows) - 1
        rows[slot].append((index, example))
        room[slot] -= size
    return rows


def padded_batch(examples: list[Encoded], pad_id: int) -> Batch:
    """Right-padded rows with an attention mask (targets -100 on padding)."""
    width = max(len(e.inputs) for e in examples)
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.bool)
    for row, e in enumerate(examples):
        inputs[row, : len(e.inputs)] = torch.tensor(e.inputs)
        targets[row, : len(e.targets)] = torch.tensor(e.targets)
        mask[row, : len(e.inputs)] = True
    return Batch(inputs=inputs, targets=targets, attention_mask=mask)


def packed_batch(rows: list[list[tuple[int, Encoded]]], length: int, pad_id: int) -> Batch:
    """Rows of packed examples with segment numbers (1, 2, ...; 0 = padding)."""
    inputs = torch.full((len(rows), length), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    segments = torch.zeros(len(rows), length, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for number, (_, e) in enumerate(row, start=1):
            end = start + len(e.inputs)
            inputs[r, start:end] = torch.tensor(e.inputs)
            targets[r, start:end] = torch.tensor(e.targets)
            segments[r, start:end] = number
            start = end
    return Batch(inputs=inputs, targets=targets, segments=segments)
