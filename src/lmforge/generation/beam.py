"""Beam search with Hugging Face's semantics (length penalty, early stopping, end tokens)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.generation.sampling import (
    NEG,
    StopWhen,
    advance,
    prefill,
    process_logits,
    require_causal_lm,
    setup_rows,
)
from lmforge.model import GPT
from lmforge.model.onednn import packed_linears


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
    rows, starts, cache, seen = setup_rows(model, prompts, n, sampling)
    batch, device, ends = len(prompts), cache.keys[0].device, list(dict.fromkeys(stop_ids))
    width = min(max(2, 1 + len(ends)) * n, n * model.cfg.vocab_size)
    top_n = torch.arange(width, device=device) < n  # only these candidates may finish
    running = torch.tensor([0.0] + [NEG] * (n - 1), device=device).repeat(batch, 1)  # one beam
    done = torch.full((batch, n), NEG, device=device)
    done_ids: list[list[list[int]]] = [[[] for _ in range(n)] for _ in range(batch)]
    finished = torch.zeros(batch, n, dtype=torch.bool, device=device)
    open_ = torch.ones(batch, dtype=torch.bool, device=device)  # may still improve
    logits = prefill(model, cache, rows, pad_id)
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
        logits = advance(model, cache, token.view(-1), rows, pad_id)
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
