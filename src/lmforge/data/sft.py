"""Prompt -> completion data: JSONL reading, a chat template, label masking and packing.

Each JSONL line is {"prompt": ..., "completion": ...} or {"messages": [{"role", "content"}...]}.
Messages are rendered with CHAT_TEMPLATE: every turn becomes `<|role|>\\n{content}\\n`, the
prompt ends with the header of the last assistant turn and that turn's content is the
completion, so earlier turns are context only. The loss counts completion tokens only (prompt
labels are -100), and the end-of-text token after each completion teaches the model to stop.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.batches import IGNORE_INDEX, Batch
from lmforge.errors import DataError
from lmforge.rundir.files import read_utf8
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = "<|{role}|>\n{content}\n"  # one turn; a prompt ends with "<|assistant|>\n"


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: str
    completion: str


def render_messages(messages: list[dict], where: str) -> Pair:
    """The prompt (turns before the last assistant turn, then its header) and the completion."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise DataError(f"{where}: every message needs a role among {ROLES} and a content")
        if not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: message content must be a string")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer to learn")
    context = "".join(CHAT_TEMPLATE.format(**turn) for turn in messages[:-1])
    return Pair(context + "<|assistant|>\n", messages[-1]["content"])


def _pair(line: str, where: str) -> Pair:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return render_messages(record["messages"], where)
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(f"{where}: needs string fields prompt and completion (or messages)")
    return Pair(prompt, completion)


def read_pairs(path: Path, skip_bad_lines: bool = False) -> list[Pair]:
    """Every example of a JSONL file; a bad line stops with its number unless skipped."""
    lines = read_utf8(path, "examples file").splitlines()
    pairs, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            pairs.append(_pair(line, f"{path}:{number}"))
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
    """Tokens of prompt + completion + <|endoftext|>, shifted into (inputs, targets); a pair
    longer than max_len + 1 tokens loses the start of its prompt (then the end of its
    completion). Returns whether it was truncated."""
    prompt = tokenizer.encode(pair.prompt)
    completion = [*tokenizer.encode(pair.completion), tokenizer.eot_id]
    budget = max_len + 1
    truncated = len(prompt) + len(completion) > budget
    if truncated:
        keep_prompt = max(1, budget - len(completion))
        prompt = prompt[-keep_prompt:] if prompt else []
        completion = completion[: budget - len(prompt)]
    ids = prompt + completion
    labels = [IGNORE_INDEX] * len(prompt) + completion
    return Encoded(ids[:-1], labels[1:]), truncated


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
