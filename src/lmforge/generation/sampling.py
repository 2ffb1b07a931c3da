"""Decoding's building blocks: logits processors, sampling, and the steps of a decoding loop
(prefill, advance one token, restart past the context) shared by sampling and beam search."""

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.errors import ConfigError
from lmforge.model import GPT, KVCache

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
    restricted to the top-k tokens and to the smallest set whose probability reaches top_p.

    Computed as softmax((l - max l) / T) in float64, which is the same distribution but stays
    finite for any finite T > 0: logits / 1e-45 or a +inf left by a tiny repetition penalty
    would otherwise make softmax NaN."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double().clamp(max=torch.finfo(torch.float64).max)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
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


def prefill(model: GPT, cache: KVCache, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Empty the cache and read the rows left-padded into it; logits at the last position (R, V)."""
    device, width = model.ln_f.weight.device, max(len(ids) for ids in rows)
    idx = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in rows], device=device)
    real = torch.tensor([[False] * (width - len(ids)) + [True] * len(ids) for ids in rows])
    mask = None if bool(real.all()) else real.to(device)
    cache.reset()
    logits = model(idx.to(device), kv_cache=cache, attention_mask=mask, logits_to_keep=1)
    return logits[:, -1].float()


def advance(
    model: GPT, cache: KVCache, tokens: torch.Tensor, rows: Sequence[Sequence[int]], pad_id: int
) -> torch.Tensor:
    """Feed one token per row (R,); logits (R, V). When the context is full, the cache restarts
    from the last 3/4 of each row (rows already end with these tokens)."""
    if cache.pos >= cache.max_len:
        keep = max(1, cache.max_len * 3 // 4)
        return prefill(model, cache, [ids[-keep:] for ids in rows], pad_id)
    return model(tokens[:, None], kv_cache=cache)[:, -1].float()


def require_causal_lm(model: torch.nn.Module) -> None:
    """Generation continues text left to right: only a GPT can do it."""
    if not isinstance(model, GPT):
        arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
        raise ConfigError(
            f"cannot generate with a {arch} model: generation needs a causal language model "
            "(model.arch=gpt); a BERT encoder fills in masks or classifies instead"
        )


def setup_rows(
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
