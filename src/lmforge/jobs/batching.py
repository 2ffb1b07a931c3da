"""Continuous batching for `lmforge serve`: requests join the running batch between tokens.

One scheduler thread owns decoding. At every token boundary it takes waiting requests that
sample the way the running batch does (all greedy ones, or equal temperature, top_p and seed)
into the batch, up to `max_batch` rows, and drops the rows that ended (end-of-text token, a stop
string, their own max_tokens, their client leaving). When the rows change, the batch's KV cache
is rebuilt by one left-padded prefill of every row's tokens so far (prompt and answer), each row
keeping its own positions; otherwise each step feeds one token per row. A row's text reaches its
client as it comes. Requests that sample differently wait until the running batch has ended.

Greedy rows are decoded as they would be alone (tested in tests/e2e/test_serve.py and
tests/e2e/test_batching.py).
"""

import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.config import SamplingConfig
from lmforge.generation.sampling import advance, prefill, sample_next
from lmforge.model.attention import KVCache
from lmforge.model.onednn import packed_linears
from lmforge.tokenizer import Tokenizer

Event = tuple[str, list[int], str | None]  # (new text, new token ids so far, finish reason)


@dataclass
class Job:
    """One request: what to decode, and where its events go."""

    ids: list[int]
    sampling: SamplingConfig
    stops: list[str]
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    new: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False


def batch_key(sampling: SamplingConfig) -> tuple:
    """Requests with equal keys share a batch: every greedy request, or equal sampling."""
    if sampling.temperature == 0:
        return ("greedy",)
    return ("sample", sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed)


class Batcher:
    """The scheduler thread and its waiting line."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Tokenizer, lock: threading.Lock, max_batch: int
    ) -> None:
        self.model, self.tokenizer, self.lock, self.max_batch = model, tokenizer, lock, max_batch
        self.incoming: queue.Queue[Job] = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.batches: list[int] = []  # the batch's size each time its rows changed
        self.joins = 0  # requests that joined a batch already running
        threading.Thread(target=self._run, daemon=True, name="lmforge-batcher").start()

    def stream(
        self,
        ids: list[int],
        sampling: SamplingConfig,
        stops: list[str],
        cancelled: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Submit a request and yield its events as the batch decodes it."""
        job = Job(ids, sampling, stops, cancelled=cancelled or threading.Event())
        self.incoming.put(job)
        while (event := job.events.get()) is not None:
            yield event

    def _run(self) -> None:
        with torch.inference_mode(), packed_linears(self.model):  # packed for the server's life
            while True:
                active: list[Job] = []
                try:
                    self._serve(active)
                except Exception as exc:  # a failed step ends its batch, never the server
                    for job in active:
                        if not job.done:
                            self._finish(job, "", f"error: {exc}")

    def _serve(self, active: list[Job]) -> None:
        """Decode until a step fails; `active` is the running batch (the caller's list)."""
        cache, logits, generator = None, None, None
        while True:
            if not active and not self.waiting:
                self.waiting.append(self.incoming.get())  # idle: wait for a request
            while not self.incoming.empty():
                self.waiting.append(self.incoming.get_nowait())
            joining = self._joining(active)
            if joining or cache is None:
                if active and joining:
                    self.joins += len(joining)
                active.extend(joining)
                self.batches.append(len(active))
                with self.lock:
                    cache, logits = self._prefill(active)
                generator = self._generator(active[0].sampling)
            with self.lock:
                tokens = self._step(active, logits, generator)
            for job, token in zip(active, tokens.tolist(), strict=True):
                if not job.done:
                    self._advance(job, token, self.tokenizer.eot_id)
            for job in active:
                if job.cancelled.is_set() and not job.done:
                    self._finish(job, "", "cancelled")
            live = [job for job in active if not job.done]
            if len(live) != len(active):  # rows left: rebuild the batch without them
                active[:], cache = live, None
                continue
            with self.lock:
                logits = self._feed(active, cache, tokens)

    def _joining(self, active: list[Job]) -> list[Job]:
        """Waiting jobs that sample as the running batch does (or as the oldest waiting one,
        when nothing runs), in arrival order, while rows are free."""
        if not self.waiting:
            return []
        key = batch_key((active or list(self.waiting))[0].sampling)
        room = self.max_batch - len(active)
        joining = [job for job in self.waiting if batch_key(job.sampling) == key][:room]
        for job in joining:
            self.waiting.remove(job)
        return joining

    def _rows(self, jobs: list[Job]) -> list[list[int]]:
        """Every row's tokens so far, cut to the last 3/4 of the context when they outgrow it."""
        limit, keep = self.model.cfg.block_size - 1, self.model.cfg.block_size * 3 // 4
        rows = [[*job.ids, *job.new] for job in jobs]
        return [row if len(row) <= limit else row[-keep:] for row in rows]

    def _prefill(self, jobs: list[Job]) -> tuple[KVCache, torch.Tensor]:
        rows = self._rows(jobs)
        cache = self.model.new_kv_cache(len(rows))
        return cache, prefill(self.model, cache, rows, self.tokenizer.eot_id)

    def _feed(self, jobs: list[Job], cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        return advance(self.model, cache, tokens, self._rows(jobs), self.tokenizer.eot_id)

    @staticmethod
    def _generator(sampling: SamplingConfig) -> torch.Generator | None:
        return None if sampling.seed is None else torch.Generator().manual_seed(sampling.seed)

    @staticmethod
    def _step(active: list[Job], logits: torch.Tensor, generator: torch.Generator | None) -> Any:
        s = active[0].sampling
        return sample_next(logits, s.temperature, s.top_k, s.top_p, generator)

    def _text(self, job: Job) -> str:
        return self.tokenizer.decode(job.new)

    def _advance(self, job: Job, token: int, eot: int) -> None:
        """One new token of a row: emit what is ready, end the row where it should end."""
        if job.cancelled.is_set():
            self._finish(job, "", "cancelled")
            return
        if token == eot:
            self._finish(job, self._text(job)[len(job.sent) :], "stop")
            return
        job.new.append(token)
        text = self._text(job)
        cut = min((i for s in job.stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._finish(job, text[len(job.sent) : cut], "stop")
            return
        if len(job.new) >= job.sampling.max_new_tokens:
            self._finish(job, text[len(job.sent) :], "length")
            return
        held = max((len(s) - 1 for s in job.stops), default=0)
        ready = len(text.rstrip("\ufffd")) - held
        if ready > len(job.sent):
            piece, job.sent = text[len(job.sent) : ready], text[:ready]
            job.events.put((piece, list(job.new), None))

    def _finish(self, job: Job, piece: str, reason: str) -> None:
        job.done = True
        job.events.put((piece, list(job.new), reason))
        job.events.put(None)
