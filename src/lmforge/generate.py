"""Sampling and autoregressive generation with a KV cache, streaming text as it is produced."""

import logging
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): argmax at temperature 0, else softmax(logits/T)
    restricted to the top-k tokens and to the smallest set whose probability reaches top_p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly better tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def fit_prompt(ids: list[int], block_size: int) -> list[int]:
    """Keep the last block_size - 1 tokens of a prompt that would not fit, with a warning."""
    keep = max(1, block_size - 1)
    if len(ids) > keep:
        log.warning(
            "prompt of %d tokens exceeds the context of %d; keeping its last %d tokens",
            len(ids),
            block_size,
            keep,
        )
        return ids[-keep:]
    return ids


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    sampling: SamplingConfig,
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield new token ids one by one: prefill the prompt, then decode with the KV cache.

    When the context fills up, the cache restarts from the last 3/4 of the context.
    """
    block = model.cfg.block_size
    device = model.tok_emb.weight.device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    stops = set(stop_ids)
    context = fit_prompt(list(prompt_ids), block)
    cache = model.new_kv_cache(1)
    logits = model(torch.tensor([context], device=device), kv_cache=cache)[:, -1]
    for produced in range(sampling.max_new_tokens):
        token = int(
            sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)[0]
        )
        if token in stops:
            return
        yield token
        context.append(token)
        if produced + 1 == sampling.max_new_tokens:
            return
        if cache.pos >= block:  # full: re-read the recent past into a fresh cache
            cache.pos = 0
            recent = context[-max(1, block * 3 // 4) :]
            logits = model(torch.tensor([recent], device=device), kv_cache=cache)[:, -1]
        else:
            logits = model(torch.tensor([[token]], device=device), kv_cache=cache)[:, -1]


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of text that could still grow into a stop string."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: SamplingConfig,
    stop: Iterable[str] = (),
) -> Iterator[str]:
    """Stream the continuation of prompt as text pieces; ends at <|endoftext|> or a stop string."""
    stops = [s for s in stop if s]
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    new_ids: list[int] = []
    emitted = 0
    text = ""
    for token in generate_tokens(model, prompt_ids, sampling, stop_ids=[tokenizer.eot_id]):
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        cut = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            yield text[emitted:cut]
            return
        ready = len(text.rstrip("\ufffd"))  # an unfinished multi-byte character waits
        ready = min(ready, len(text) - _held_back(text, stops))
        if ready > emitted:
            yield text[emitted:ready]
            emitted = ready
    if len(text) > emitted:
        yield text[emitted:]
