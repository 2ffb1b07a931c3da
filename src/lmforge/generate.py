"""Generation: logits processors, sampling, batched decoding, beam search, streamed text.

Every decoding loop preallocates one KVCache for its whole batch (`model.new_kv_cache`) and
feeds the model one new token per row per step. Prompts of a batch are left-padded; a row that
finishes (end token, stop string, max tokens) feeds the pad token until the batch is done.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.errors import ConfigError
from lmforge.model import GPT, KVCache
from lmforge.model.packed import packed_linears
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)
NEG = -1.0e9  # the score of an impossible beam, as in Hugging Face's beam search
StopWhen = Callable[[list[int]], bool]  # new token ids of a row -> has it reached a stop?

# ---------------------------------------------------------------- logits processors (pure)


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty (Keskar et al. 2019) on tokens already in the row (seen (R, V) bool):
    s' = s / θ where s > 0 and s' = s · θ where s < 0."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def no_repeat_ngram(scores: torch.Tensor, rows: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    """-inf on token t of row r when (last n-1 tokens of r, t) is an n-gram already in r."""
    banned = []
    for r, ids in enumerate(rows):
        prefix = list(ids[len(ids) - n + 1 :])
        banned += [
            (r, ids[i + n - 1]) for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix
        ]
    if not banned:
        return scores
    where = torch.tensor(banned, device=scores.device).T  # (2, banned)
    return scores.index_put((where[0], where[1]), torch.tensor(float("-inf"), device=scores.device))


def min_new_tokens(
    scores: torch.Tensor, produced: int, minimum: int, end_ids: Sequence[int]
) -> torch.Tensor:
    """-inf on the end tokens while fewer than `minimum` new tokens were produced."""
    if produced >= minimum or not end_ids:
        return scores
    return scores.index_fill(-1, torch.tensor(list(end_ids), device=scores.device), float("-inf"))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """-inf on every logit below the k-th largest of its row; k = 0 (or >= V) keeps all."""
    if not 0 < k < logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches p, i.e. drop t when P(tokens no more likely than t) <= 1 - p."""
    if p >= 1.0:
        return logits
    ascending, order = torch.sort(logits, dim=-1)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - p  # (R, V), least likely first
    drop[..., -1] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


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
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def process_logits(
    scores: torch.Tensor,
    sampling: SamplingConfig,
    rows: Sequence[Sequence[int]],
    seen: torch.Tensor | None,
    produced: int,
    end_ids: Sequence[int],
) -> torch.Tensor:
    """The sampling's processors in Hugging Face's order: repetition penalty, no-repeat n-gram,
    min new tokens. rows are each row's tokens so far (prompt included), seen their (R, V) set."""
    if seen is not None and sampling.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, seen, sampling.repetition_penalty)
    if sampling.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, rows, sampling.no_repeat_ngram_size)
    return min_new_tokens(scores, produced, sampling.min_new_tokens, end_ids)


# ---------------------------------------------------------------- the decoding loop's pieces


def fit_prompt(ids: list[int], block_size: int) -> list[int]:
    """Keep the last block_size - 1 tokens of a prompt that would not fit, with a warning."""
    keep = max(1, block_size - 1)
    if len(ids) > keep:
        message = "prompt of %d tokens exceeds the context of %d; keeping its last %d tokens"
        log.warning(message, len(ids), block_size, keep)
        return ids[-keep:]
    return ids


def _prefill(
    model: GPT, cache: KVCache, rows: Sequence[Sequence[int]], pad_id: int
) -> torch.Tensor:
    """Empty the cache and read the rows left-padded into it; logits at the last position (R, V)."""
    device, width = model.tok_emb.weight.device, max(len(ids) for ids in rows)
    idx = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in rows], device=device)
    real = torch.tensor([[False] * (width - len(ids)) + [True] * len(ids) for ids in rows])
    mask = None if bool(real.all()) else real.to(device)
    cache.reset()
    logits = model(idx.to(device), kv_cache=cache, attention_mask=mask, logits_to_keep=1)
    return logits[:, -1].float()


def _advance(
    model: GPT, cache: KVCache, tokens: torch.Tensor, rows: Sequence[Sequence[int]], pad_id: int
) -> torch.Tensor:
    """Feed one token per row (R,); logits (R, V). When the context is full, the cache restarts
    from the last 3/4 of each row (rows already end with these tokens)."""
    if cache.pos >= cache.max_len:
        keep = max(1, cache.max_len * 3 // 4)
        return _prefill(model, cache, [ids[-keep:] for ids in rows], pad_id)
    return model(tokens[:, None], kv_cache=cache)[:, -1].float()


def require_causal_lm(model: torch.nn.Module) -> None:
    """Generation continues text left to right: only a GPT can do it."""
    if not isinstance(model, GPT):
        arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
        raise ConfigError(
            f"cannot generate with a {arch} model: generation needs a causal language model "
            "(model.arch=gpt); a BERT encoder fills in masks or classifies instead"
        )


def _setup(
    model: GPT, prompts: Sequence[Sequence[int]], copies: int, sampling: SamplingConfig
) -> tuple[list[list[int]], list[int], KVCache, torch.Tensor | None]:
    """Rows (each fitted prompt `copies` times), their prompt lengths, the one cache of the
    whole generation, and the (R, V) set of each row's tokens if a repetition penalty needs it."""
    rows = [fit_prompt(list(p), model.cfg.block_size) for p in prompts for _ in range(copies)]
    cache, seen = model.new_kv_cache(len(rows)), None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(len(rows), model.cfg.vocab_size, dtype=torch.bool)
        for r, ids in enumerate(rows):
            seen[r, ids] = True
        seen = seen.to(cache.keys[0].device)
    return rows, [len(ids) for ids in rows], cache, seen


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
    rows, starts, cache, seen = _setup(model, prompts, 1, sampling)
    device, ends, alive = cache.keys[0].device, list(dict.fromkeys(stop_ids)), [True] * len(rows)
    t, k, p, seed = sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    logits = _prefill(model, cache, rows, pad_id)
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
        logits = _advance(model, cache, tokens, rows, pad_id)


def generate_tokens(
    model: GPT, prompt_ids: Sequence[int], sampling: SamplingConfig, stop_ids: Sequence[int] = ()
) -> Iterator[int]:
    """Yield new token ids one by one for one prompt: prefill, then decode with the KV cache.

    When the context fills up, the cache restarts from the last 3/4 of the context.
    """
    events = generate_batch_tokens(model, [prompt_ids], sampling, stop_ids=stop_ids)
    return (token for _, token in events)


# ---------------------------------------------------------------- beam search


def beam_search(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    stop_ids: Sequence[int] = (),
    stop_when: StopWhen | None = None,
    pad_id: int = 0,
) -> list[list[tuple[float, list[int]]]]:
    """Per prompt, its `beams` best finished hypotheses (score, new ids), best first.

    Hugging Face's beam search (transformers 5 `_beam_search`, do_sample=False): each step
    scores = running sum of processed log_softmax; the top max(2, 1 + len(stop_ids))·beams
    continuations are ranked; those among the first `beams` that end (stop id, stop_when, max
    tokens) become hypotheses scored sum / generated_length ** length_penalty, where the length
    counts the end token; the best `beams` that do not end run on. Without early_stopping the
    search ends when the best running beam, scored at its current length, cannot beat the worst
    of `beams` hypotheses. A stop id ends a hypothesis without being part of it.
    """
    require_causal_lm(model)
    if not prompts or sampling.max_new_tokens == 0:
        return [[(0.0, [])] for _ in prompts]
    with packed_linears(model):
        return _beam_search(model, prompts, sampling, stop_ids, stop_when, pad_id)


@torch.inference_mode()
def _beam_search(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    stop_ids: Sequence[int],
    stop_when: StopWhen | None,
    pad_id: int,
) -> list[list[tuple[float, list[int]]]]:
    n, lp = sampling.beams, sampling.length_penalty
    rows, starts, cache, seen = _setup(model, prompts, n, sampling)
    batch, device, ends = len(prompts), cache.keys[0].device, list(dict.fromkeys(stop_ids))
    width = min(max(2, 1 + len(ends)) * n, n * model.cfg.vocab_size)
    top_n = torch.arange(width, device=device) < n  # only these candidates may finish
    running = torch.tensor([0.0] + [NEG] * (n - 1), device=device).repeat(batch, 1)  # one beam
    done = torch.full((batch, n), NEG, device=device)
    done_ids: list[list[list[int]]] = [[[] for _ in range(n)] for _ in range(batch)]
    finished = torch.zeros(batch, n, dtype=torch.bool, device=device)
    open_ = torch.ones(batch, dtype=torch.bool, device=device)  # may still improve
    logits = _prefill(model, cache, rows, pad_id)
    for step in range(sampling.max_new_tokens):
        log_probs = process_logits(F.log_softmax(logits, dim=-1), sampling, rows, seen, step, ends)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, n, vocab) + running[:, :, None]).view(batch, n * vocab)
        cand, index = torch.topk(totals, width)  # (B, W)
        beam, token = index // vocab, index % vocab
        ids, ends_here = _candidates(rows, starts, beam, token, ends, stop_when)
        ends_here |= step + 1 == sampling.max_new_tokens
        # the best n candidates that go on run in the next step
        masked = cand + ends_here.float() * NEG
        keep = torch.topk(masked, n).indices
        running, beam, token = masked.gather(1, keep), beam.gather(1, keep), token.gather(1, keep)
        # those among the top n that ended compete with the hypotheses so far
        new = cand / ((step + 1) ** lp)
        new += (finished.all(1, keepdim=True) & sampling.early_stopping).float() * NEG
        new += (~open_[:, None]).float() * NEG
        new += (~(ends_here & top_n)).float() * NEG
        best = torch.topk(torch.cat([done, new], dim=1), n).indices
        done = torch.cat([done, new], dim=1).gather(1, best)
        finished = torch.cat([finished, ends_here & top_n], dim=1).gather(1, best)
        done_ids = [[(done_ids[b] + ids[b])[j] for j in best[b].tolist()] for b in range(batch)]
        worst = torch.where(finished, done.min(1, keepdim=True).values, NEG)
        open_ &= (running[:, :1] / ((step + 1) ** lp) > worst).any(1)
        all_full = sampling.early_stopping and bool(finished.all())
        if not bool(open_.any()) or all_full or bool(ends_here.all()):
            break
        order = (torch.arange(batch, device=device)[:, None] * n + beam).view(-1)  # (B·N,)
        cache.reorder(order)
        rows = [rows[i] + [t] for i, t in zip(order.tolist(), token.view(-1).tolist(), strict=True)]
        if seen is not None:
            seen = seen[order]
            seen[torch.arange(len(rows), device=device), token.view(-1)] = True
        logits = _advance(model, cache, token.view(-1), rows, pad_id)
    flags, scores = finished.tolist(), done.tolist()
    return [[(scores[b][j], done_ids[b][j]) for j in range(n) if flags[b][j]] for b in range(batch)]


def _candidates(
    rows: Sequence[list[int]],
    starts: Sequence[int],
    beam: torch.Tensor,
    token: torch.Tensor,
    ends: Sequence[int],
    stop_when: StopWhen | None,
) -> tuple[list[list[list[int]]], torch.Tensor]:
    """Each candidate's new ids (an end token left out) and whether it ends (B, W)."""
    n, stops = len(rows) // len(beam), stop_when or (lambda _: False)
    ids: list[list[list[int]]] = []
    ended: list[list[bool]] = []
    for b, (js, ts) in enumerate(zip(beam.tolist(), token.tolist(), strict=True)):
        old = [rows[b * n + j][starts[b * n] :] for j in js]
        ids.append([new + [t] * (t not in ends) for new, t in zip(old, ts, strict=True)])
        ended.append([t in ends or stops(i) for t, i in zip(ts, ids[-1], strict=True)])
    return ids, torch.tensor(ended, device=beam.device)


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
