"""Batched decoding for `lmforge serve`: requests waiting together are decoded together.

One scheduler thread owns decoding. It takes the oldest waiting request and every other waiting
request that samples the same way (all greedy ones, or the same temperature, top_p and seed),
up to `max_batch`, and decodes them as one left-padded batch through the KV cache: a row's
pieces reach its client as they come, a row ends at the end-of-text token, a stop string, its
own max_tokens or when its client leaves, and the batch ends when its last row does. Requests
that arrive meanwhile wait for the next batch (they do not join the running one).

Greedy rows are decoded as they would be alone (the batch is left-padded and each row keeps its
own positions); tested in tests/e2e/test_serve.py.
"""

import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from lmforge.config import SamplingConfig
from lmforge.generation.loop import generate_batch_tokens
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
        self.batches: list[int] = []  # sizes of the batches decoded so far
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
        with packed_linears(self.model):  # packed once for the server's life
            self._serve()

    def _serve(self) -> None:
        while True:
            if not self.waiting:
                self.waiting.append(self.incoming.get())
            while not self.incoming.empty():
                self.waiting.append(self.incoming.get_nowait())
            batch = self._take()
            self.batches.append(len(batch))
            with self.lock:
                self._decode(batch)

    def _take(self) -> list[Job]:
        """The oldest waiting job and those that sample as it does, in arrival order."""
        key = batch_key(self.waiting[0].sampling)
        batch = [job for job in self.waiting if batch_key(job.sampling) == key]
        batch = batch[: self.max_batch]
        for job in batch:
            self.waiting.remove(job)
        return batch

    def _decode(self, batch: list[Job]) -> None:
        eot = self.tokenizer.eot_id
        longest = max(job.sampling.max_new_tokens for job in batch)
        sampling = replace(batch[0].sampling, max_new_tokens=longest)
        prompts = [job.ids for job in batch]
        events = generate_batch_tokens(self.model, prompts, sampling, pad_id=eot)
        try:
            for row, token in events:
                job = batch[row]
                if not job.done:
                    self._advance(job, token, eot)
                if all(job.done or job.cancelled.is_set() for job in batch):
                    break
        except Exception as exc:  # a decoding failure ends the batch, never the server
            for job in batch:
                if not job.done:
                    self._finish(job, "", f"error: {exc}")
        finally:
            events.close()
            for job in batch:
                if not job.done:
                    reason = "length" if len(job.new) >= job.sampling.max_new_tokens else "stop"
                    self._finish(job, self._text(job)[len(job.sent) :], reason)

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
