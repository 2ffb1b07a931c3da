"""Generation: logits processors, sampling, batched decoding, beam search, streamed text.

Every decoding loop preallocates one KVCache for its whole batch (`model.new_kv_cache`) and
feeds the model one new token per row per step. Prompts of a batch are left-padded; a row that
finishes (end token, stop string, max tokens) feeds the pad token until the batch is done.
"""

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from lmforge.config import SamplingConfig
from lmforge.generation.beam import beam_search
from lmforge.generation.sampling import (
    StopWhen,
    advance,
    fit_prompt,
    min_new_tokens,
    no_repeat_ngram,
    prefill,
    process_logits,
    repetition_penalty,
    require_causal_lm,
    sample_next,
    setup_rows,
    top_k_filter,
    top_p_filter,
)
from lmforge.model import GPT
from lmforge.model.onednn import packed_linears
from lmforge.tokenizer import Tokenizer

__all__ = [  # the processors are re-exported: decoding.py holds them
    "beam_search",
    "fit_prompt",
    "generate",
    "generate_batch_tokens",
    "generate_text",
    "generate_tokens",
    "min_new_tokens",
    "no_repeat_ngram",
    "process_logits",
    "repetition_penalty",
    "require_causal_lm",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]

# ---------------------------------------------------------------- sampling and greedy


def generate_batch_tokens(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    stop_ids: Sequence[int] = (),
    stop_when: StopWhen | None = None,
    pad_id: int = 0,
) -> Iterator[tuple[int, int]]:
    """Yield (row, token) for the prompts decoded together, as each step picks the tokens.

    A row ends at a token of stop_ids (not yielded), after a token for which stop_when(its new
    ids) is true, or at max_new_tokens; the others go on. With beams > 1 each row's best beam
    is yielded whole once the search ends. Rows share one window: when the longest (padded)
    fills the context, every row restarts from its last 3/4 context, a short one earlier than
    it would alone.
    """
    require_causal_lm(model)
    if sampling.beams > 1:
        found = beam_search(
            model, prompts, sampling, stop_ids=stop_ids, stop_when=stop_when, pad_id=pad_id
        )
        for r, hypotheses in enumerate(found):
            yield from ((r, token) for token in hypotheses[0][1])
        return
    if not prompts or sampling.max_new_tokens == 0:
        return
    with packed_linears(model):  # the model's weights must not change until this ends
        yield from _sample_batch(model, prompts, sampling, stop_ids, stop_when, pad_id)


@torch.inference_mode()
def _sample_batch(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    stop_ids: Sequence[int],
    stop_when: StopWhen | None,
    pad_id: int,
) -> Iterator[tuple[int, int]]:
    """generate_batch_tokens without beams: sample (or argmax) every row, step by step."""
    rows, starts, cache, seen = setup_rows(model, prompts, 1, sampling)
    device, ends, alive = cache.keys[0].device, list(dict.fromkeys(stop_ids)), [True] * len(rows)
    t, k, p, seed = sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    logits = prefill(model, cache, rows, pad_id)
    for produced in range(sampling.max_new_tokens):
        scores = process_logits(logits, sampling, rows, seen, produced, ends)
        tokens = sample_next(scores, t, k, p, generator)
        for r, token in enumerate(tokens.tolist()):
            if not alive[r] or token in ends:
                alive[r] = False
                continue
            rows[r].append(token)
            yield r, token
            if stop_when is not None and stop_when(rows[r][starts[r] :]):
                alive[r] = False
        if not any(alive) or produced + 1 == sampling.max_new_tokens:
            return
        tokens = tokens.masked_fill(~torch.tensor(alive, device=device), pad_id)
        if seen is not None:
            seen[torch.arange(len(rows), device=device), tokens] = True
        logits = advance(model, cache, tokens, rows, pad_id)


def generate_tokens(
    model: GPT, prompt_ids: Sequence[int], sampling: SamplingConfig, stop_ids: Sequence[int] = ()
) -> Iterator[int]:
    """Yield new token ids one by one for one prompt: prefill, then decode with the KV cache.

    When the context fills up, the cache restarts from the last 3/4 of the context.
    """
    events = generate_batch_tokens(model, [prompt_ids], sampling, stop_ids=stop_ids)
    return (token for _, token in events)


# ---------------------------------------------------------------- text


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of text that could still grow into a stop string."""
    sizes = [k for s in stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])]
    return max(sizes, default=0)


def _first_stop(text: str, stops: list[str]) -> int:
    """Index of the first stop string in text, or -1."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=-1)


def _text_events(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    stops: list[str],
) -> Iterator[tuple[int, int]]:
    """(row, token) events of prompts ending at <|endoftext|> (also the pad) or a stop string."""
    require_causal_lm(model)
    stop_when = (lambda ids: _first_stop(tokenizer.decode(ids), stops) >= 0) if stops else None
    eot = tokenizer.eot_id
    return generate_batch_tokens(
        model, prompts, sampling, stop_ids=[eot], stop_when=stop_when, pad_id=eot
    )


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: SamplingConfig,
    stop: Sequence[str] = (),
) -> Iterator[str]:
    """Stream the continuation of prompt as text pieces; ends at <|endoftext|>, a stop string
    (left out) or max_new_tokens. With beams > 1 the best beam arrives in one piece."""
    require_causal_lm(model)
    stops, prompt_ids = [s for s in stop if s], tokenizer.encode(prompt) or [tokenizer.eot_id]
    new_ids: list[int] = []
    emitted, text = 0, ""
    for _, token in _text_events(model, tokenizer, [prompt_ids], sampling, stops):
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        cut = _first_stop(text, stops)
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


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    sampling: SamplingConfig,
    stop: Sequence[str] = (),
    batch_size: int = 8,
) -> Iterator[str]:
    """Continue one prompt or many.

    A str prompt streams its continuation in pieces, exactly as generate_text. A sequence of
    prompts yields one whole completion per prompt, in order, each batch of batch_size prompts
    decoded together (left-padded); a seeded batch i samples with seed + i. Completions end as
    in generate_text: `list(generate(model, tok, prompts, sampling))` is the list of them.
    """
    if isinstance(prompts, str):
        yield from generate_text(model, tokenizer, prompts, sampling, stop)
        return
    stops, eot = [s for s in stop if s], tokenizer.eot_id
    for i, first in enumerate(range(0, len(prompts), batch_size)):
        chunk = [tokenizer.encode(p) or [eot] for p in prompts[first : first + batch_size]]
        seeded = sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + i)
        new_ids: list[list[int]] = [[] for _ in chunk]
        for row, token in _text_events(model, tokenizer, chunk, seeded, stops):
            new_ids[row].append(token)
        for ids in new_ids:
            text = tokenizer.decode(ids)
            cut = _first_stop(text, stops)
            yield text if cut < 0 else text[:cut]
