"""Continuous batching: a request joins the batch that is already decoding, and greedy rows
get the tokens they get alone."""

import threading
from pathlib import Path

from lmforge.config import SamplingConfig
from lmforge.jobs.batching import Batcher
from lmforge.rundir.load import load_run


def _alone(batcher: Batcher, ids: list[int], tokens: int) -> list[int]:
    events = list(batcher.stream(ids, SamplingConfig(max_new_tokens=tokens, temperature=0), []))
    return events[-1][1]


def test_a_request_joins_a_running_batch_and_keeps_its_greedy_tokens(trained_run: Path) -> None:
    _, model, tokenizer = load_run(trained_run)
    batcher = Batcher(model, tokenizer, threading.Lock(), max_batch=4)
    first, second = tokenizer.encode("The list type"), tokenizer.encode("Paragraph 3: the")
    expected = (_alone(batcher, first, 20), _alone(batcher, second, 6))
    greedy = SamplingConfig(max_new_tokens=20, temperature=0)
    long = batcher.stream(first, greedy, [])
    started = next(long)  # the first request is decoding ...
    short = list(batcher.stream(second, SamplingConfig(max_new_tokens=6, temperature=0), []))
    rest = [started, *long]  # ... and the second one joined it and finished first
    assert batcher.joins >= 1
    assert max(batcher.batches) == 2
    assert short[-1][1] == expected[1]
    assert rest[-1][1] == expected[0]
    assert short[-1][2] == "length"


def test_a_cancelled_row_leaves_the_batch(trained_run: Path) -> None:
    _, model, tokenizer = load_run(trained_run)
    batcher = Batcher(model, tokenizer, threading.Lock(), max_batch=4)
    gone = threading.Event()
    events = batcher.stream(tokenizer.encode("The"), SamplingConfig(max_new_tokens=25), [], gone)
    next(events)
    gone.set()
    assert [e[2] for e in events][-1] == "cancelled"
    ids = tokenizer.encode("The list")
    again = list(batcher.stream(ids, SamplingConfig(max_new_tokens=3, temperature=0), []))
    assert again[-1][2] in ("length", "stop")  # the scheduler goes on
