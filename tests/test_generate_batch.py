"""Batched decoding, per-row stops, beam search and logits processors, against references."""

import itertools
import re

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.errors import ConfigError
from lmforge.generation.loop import (
    beam_search,
    generate,
    generate_batch_tokens,
    generate_text,
    generate_tokens,
    min_new_tokens,
    no_repeat_ngram,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from lmforge.model import GPT, KVCache
from lmforge.tokenizer import Tokenizer

BLOCK = 24


def _cfg(vocab_size: int = 97, pos_emb: str = "learned", block: int = BLOCK) -> ModelConfig:
    return ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=block,
        vocab_size=vocab_size,
        init_std=0.5,
        tie_weights=False,
        pos_emb=pos_emb,
    )


def _model(
    vocab_size: int = 97, pos_emb: str = "learned", seed: int = 0, block: int = BLOCK
) -> GPT:
    """A tiny random GPT whose greedy output varies (large init, untied head)."""
    torch.manual_seed(seed)
    return GPT(_cfg(vocab_size, pos_emb, block)).eval()


def _greedy(n: int, **kwargs: object) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, **kwargs)


def _by_row(events: list[tuple[int, int]], rows: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(rows)]
    for row, token in events:
        out[row].append(token)
    return out


PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12], [70, 2, 33]]  # different lengths: left padding


# ---------------------------------------------------------------- batched greedy


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_batched_greedy_equals_each_prompt_alone(pos_emb: str) -> None:
    model = _model(pos_emb=pos_emb)
    n = BLOCK - len(PROMPTS[0])  # the longest row fills the context exactly
    alone = [list(generate_tokens(model, p, _greedy(n))) for p in PROMPTS]
    batched = _by_row(list(generate_batch_tokens(model, PROMPTS, _greedy(n))), len(PROMPTS))
    assert batched == alone
    assert all(len(row) == n for row in batched)
    assert len({tuple(row) for row in alone}) == len(PROMPTS)  # the rows really differ


def test_batched_greedy_with_processors_equals_each_prompt_alone() -> None:
    model = _model(pos_emb="rope")
    sampling = _greedy(14, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=5)
    stop = [9]
    alone = [list(generate_tokens(model, p, sampling, stop_ids=stop)) for p in PROMPTS]
    events = list(generate_batch_tokens(model, PROMPTS, sampling, stop_ids=stop))
    assert _by_row(events, len(PROMPTS)) == alone


def test_batches_longer_than_the_context_keep_going() -> None:
    model = _model(pos_emb="rope")
    n = 3 * BLOCK
    rows = _by_row(list(generate_batch_tokens(model, PROMPTS, _greedy(n))), len(PROMPTS))
    assert [len(r) for r in rows] == [n] * len(PROMPTS)


def test_seeded_batched_sampling_is_reproducible() -> None:
    model = _model()

    def run(seed: int) -> list[tuple[int, int]]:
        sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, seed=seed)
        return list(generate_batch_tokens(model, PROMPTS, sampling))

    assert run(3) == run(3)
    assert run(3) != run(4)


# ---------------------------------------------------------------- per-row stopping


def _row_stopper(model: GPT, n: int) -> tuple[int, int, list[list[int]]]:
    """A token that row 0 produces (first time at index i >= 2) and the other rows never do."""
    alone = [list(generate_tokens(model, p, _greedy(n))) for p in PROMPTS]
    for i, token in enumerate(alone[0]):
        others = any(token in row for row in alone[1:])
        if i >= 2 and token not in alone[0][:i] and not others:
            return token, i, alone
    raise AssertionError("no token tells row 0 apart")  # pragma: no cover


def test_a_row_that_hits_its_end_token_stops_and_the_others_go_on() -> None:
    model = _model(pos_emb="rope")
    n = 16
    end, index, alone = _row_stopper(model, n)
    events = list(generate_batch_tokens(model, PROMPTS, _greedy(n), stop_ids=[end], pad_id=0))
    rows = _by_row(events, len(PROMPTS))
    assert rows[0] == alone[0][:index]  # nothing after its stop, the end token left out
    assert rows[1:] == alone[1:]  # the others run to max_new_tokens as if alone
    last_of_row0 = max(i for i, (row, _) in enumerate(events) if row == 0)
    assert last_of_row0 < len(events) - (n - index)  # later steps carry only the other rows


def test_stop_when_ends_a_row_after_the_token_that_met_it() -> None:
    model = _model(pos_emb="rope")
    n = 16
    marker, index, alone = _row_stopper(model, n)
    seen: list[list[int]] = []

    def stop_when(ids: list[int]) -> bool:
        seen.append(list(ids))
        return marker in ids

    rows = _by_row(list(generate_batch_tokens(model, PROMPTS, _greedy(n), stop_when=stop_when)), 3)
    assert rows[0] == alone[0][: index + 1]  # the token that met the stop is kept
    assert rows[1:] == alone[1:]
    assert all(ids and ids[0] in {alone[r][0] for r in range(3)} for ids in seen)  # new ids only


# ---------------------------------------------------------------- one KV cache per call


class RecordingGPT(GPT):
    """A GPT that records its caches, the cache buffers and input shapes of each forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.caches: list[KVCache] = []
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        self.caches.append(super().new_kv_cache(batch_size, max_len))
        return self.caches[-1]

    def forward(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        if kv_cache is not None:
            buffers = tuple(t.data_ptr() for t in [*kv_cache.keys, *kv_cache.values])
            self.calls.append((tuple(idx.shape), buffers))
        return super().forward(idx, kv_cache, attention_mask, logits_to_keep)


def _recording(pos_emb: str = "rope") -> RecordingGPT:
    torch.manual_seed(0)
    return RecordingGPT(_cfg(pos_emb=pos_emb)).eval()


def test_decoding_allocates_one_cache_and_feeds_one_token_per_row() -> None:
    model = _recording()
    n = 10
    list(generate_batch_tokens(model, PROMPTS, SamplingConfig(max_new_tokens=n, seed=0)))
    assert len(model.caches) == 1
    shapes = [shape for shape, _ in model.calls]
    assert shapes == [(3, 7)] + [(3, 1)] * (n - 1)  # prefill, then one new token per row
    assert len({buffers for _, buffers in model.calls}) == 1  # the same buffers every step


def test_the_cache_restart_past_the_context_reuses_the_buffers() -> None:
    model = _recording()
    list(generate_batch_tokens(model, PROMPTS, _greedy(2 * BLOCK)))
    assert len(model.caches) == 1
    assert len({buffers for _, buffers in model.calls}) == 1
    assert sum(shape[1] > 1 for shape, _ in model.calls) >= 3  # prefill and 2+ restarts


def test_beam_search_allocates_one_cache_and_feeds_one_token_per_beam() -> None:
    model = _recording()
    sampling = _greedy(6, beams=3)
    beam_search(model, PROMPTS, sampling)
    assert len(model.caches) == 1
    shapes = [shape for shape, _ in model.calls]
    assert shapes[0] == (9, 7)
    assert set(shapes[1:]) == {(9, 1)}


# ---------------------------------------------------------------- beam search


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_one_beam_is_greedy(pos_emb: str) -> None:
    model = _model(pos_emb=pos_emb)
    for prompt in PROMPTS:
        found = beam_search(model, [prompt], _greedy(15, beams=1), stop_ids=[7])
        assert found[0][0][1] == list(generate_tokens(model, prompt, _greedy(15), stop_ids=[7]))


def _sequence_log_prob(model: GPT, prompt: list[int], new: tuple[int, ...]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(new[:-1])]))[0, len(prompt) - 1 :]
    return float(F.log_softmax(logits.float(), dim=-1)[torch.arange(len(new)), list(new)].sum())


def test_wide_beam_search_finds_the_exhaustive_best_of_all_continuations() -> None:
    """Vocabulary 5, 3 new tokens: 25 beams hold every prefix, so nothing is pruned."""
    model = _model(vocab_size=5, seed=3)
    prompt = [1, 2]
    found = beam_search(model, [prompt], _greedy(3, beams=25))[0]
    every = {s: _sequence_log_prob(model, prompt, s) for s in itertools.product(range(5), repeat=3)}
    ranked = sorted(every, key=every.get, reverse=True)[:25]
    assert [tuple(ids) for _, ids in found] == ranked  # the 25 best, in order
    for score, ids in found:
        assert score == pytest.approx(every[tuple(ids)] / 3, abs=1e-4)  # length penalty 1


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5])
def test_wide_beam_search_with_an_end_token_is_exhaustive(length_penalty: float) -> None:
    """Hypotheses end at token 0 (length counts it) or after 3 tokens; score sum / len**lp."""
    model = _model(vocab_size=5, seed=4)
    prompt = [3, 1, 4]
    sampling = _greedy(3, beams=25, length_penalty=length_penalty)
    best_score, best_ids = beam_search(model, [prompt], sampling, stop_ids=[0])[0][0]
    scores = {}
    for length in (1, 2, 3):
        for body in itertools.product(range(1, 5), repeat=length - 1):
            for last in range(5) if length == 3 else (0,):
                seq = (*body, last)
                scores[seq] = _sequence_log_prob(model, prompt, seq) / length**length_penalty
    best = max(scores, key=scores.get)
    assert best_ids == [t for t in best if t != 0]  # the end token is not part of the output
    assert best_score == pytest.approx(scores[best], abs=1e-4)


def test_batched_beam_search_equals_each_prompt_alone() -> None:
    model = _model(pos_emb="rope")
    sampling = _greedy(10, beams=3, length_penalty=0.7, repetition_penalty=1.2)
    together = beam_search(model, PROMPTS, sampling, stop_ids=[5])
    for prompt, found in zip(PROMPTS, together, strict=True):
        alone = beam_search(model, [prompt], sampling, stop_ids=[5])[0]
        assert [ids for _, ids in found] == [ids for _, ids in alone]
        assert [s for s, _ in found] == pytest.approx([s for s, _ in alone], abs=1e-5)


@pytest.fixture(scope="module")
def gpt2_twins() -> tuple:
    """A random transformers GPT-2 with large weights (sharp, branching beams) and our import."""
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import model_from_hf

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if p.dim() == 1 and p.mean() > 0.5 else 0.3 * noise)
    return hf, model_from_hf(hf.config.to_dict(), hf.state_dict())


@pytest.mark.parametrize(
    ("eos", "max_new", "seeds", "settings"),
    [
        (3, 12, [0, 1, 2], {}),
        (3, 20, [0, 1, 3], {"length_penalty": 2.0, "early_stopping": True}),
        (15, 24, [0, 2, 5], {"length_penalty": 1.0}),  # the stopping heuristic decides here
        (15, 24, [0, 1], {"length_penalty": 2.0}),
        (3, 12, [0, 1, 2], {"length_penalty": 0.5, "repetition_penalty": 1.3}),
        (3, 12, [0, 1, 2], {"no_repeat_ngram_size": 2, "min_new_tokens": 4}),
        (7, 16, [0, 1], {"length_penalty": -1.0, "early_stopping": True}),
    ],
)
def test_beam_search_matches_transformers_generate(
    gpt2_twins: tuple, eos: int, max_new: int, seeds: list[int], settings: dict
) -> None:
    """Beam search on an imported GPT-2 == transformers' generate(num_beams=4), token for token."""
    hf, ours = gpt2_twins
    expected = []
    for seed in seeds:
        prompt = _ids(1, 5 + seed, 50, seed)
        with torch.no_grad():
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                num_beams=4,
                do_sample=False,
                max_new_tokens=max_new,
                eos_token_id=eos,
                pad_token_id=0,
                **settings,
            )
        theirs = out[0, prompt.shape[1] :].tolist()
        theirs = theirs[: theirs.index(eos)] if eos in theirs else theirs
        sampling = _greedy(max_new, beams=4, **settings)
        mine = beam_search(ours, [prompt[0].tolist()], sampling, stop_ids=[eos])[0][0][1]
        assert mine == theirs, seed
        expected.append(theirs)
    # the prompts searched together, left-padded: a prompt whose search is over takes no new
    # hypotheses while the others go on
    prompts = [_ids(1, 5 + seed, 50, seed)[0].tolist() for seed in seeds]
    found = beam_search(ours, prompts, sampling, stop_ids=[eos])
    assert [hypotheses[0][1] for hypotheses in found] == expected


# ---------------------------------------------------------------- processors == transformers


def _scores(rows: int = 6, vocab: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def _ids(rows: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty: float) -> None:
    processors = pytest.importorskip("transformers.generation.logits_process")
    scores, ids = _scores(), _ids(6, 12, 30)
    seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ids, True)
    expected = processors.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
    got = repetition_penalty(scores, seen, penalty)
    assert torch.equal(got, expected)
    assert not torch.equal(got, scores)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n: int) -> None:
    processors = pytest.importorskip("transformers.generation.logits_process")
    scores, ids = _scores(vocab=6), _ids(6, 40, 3)  # a small vocabulary repeats n-grams
    expected = processors.NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    got = no_repeat_ngram(scores, ids.tolist(), n)
    assert torch.equal(got, expected)
    assert torch.isinf(got).any()


def test_min_new_tokens_equals_transformers() -> None:
    processors = pytest.importorskip("transformers.generation.logits_process")
    prompt_len, minimum, ends = 5, 3, [4, 7]
    for produced in range(minimum + 2):
        scores, ids = _scores(), _ids(6, prompt_len + produced, 30)
        reference = processors.MinNewTokensLengthLogitsProcessor(prompt_len, minimum, ends)
        expected = reference(ids, scores.clone())
        got = min_new_tokens(scores, produced, minimum, ends)
        assert torch.equal(got, expected)
        assert torch.isinf(got[:, ends]).all() == (produced < minimum)


@pytest.mark.parametrize("k", [1, 5, 29, 30, 50])
def test_top_k_equals_transformers(k: int) -> None:
    processors = pytest.importorskip("transformers.generation.logits_process")
    scores = _scores()
    expected = processors.TopKLogitsWarper(k)(None, scores.clone())
    assert torch.equal(top_k_filter(scores, k), expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.7, 0.95, 0.999])
def test_top_p_equals_transformers(p: float) -> None:
    processors = pytest.importorskip("transformers.generation.logits_process")
    scores = _scores(rows=16, vocab=40) * 2
    expected = processors.TopPLogitsWarper(p)(None, scores.clone())
    assert torch.equal(top_p_filter(scores, p), expected)


def test_min_new_tokens_keeps_the_end_token_away_in_generation() -> None:
    model = _model(pos_emb="rope")
    end, index, _ = _row_stopper(model, 16)  # greedy row 0 would end after `index` tokens
    assert len(list(generate_tokens(model, PROMPTS[0], _greedy(16), stop_ids=[end]))) == index
    sampling = _greedy(16, min_new_tokens=index + 4)
    held = list(generate_tokens(model, PROMPTS[0], sampling, stop_ids=[end]))
    assert len(held) >= index + 4
    assert held[:index] == list(generate_tokens(model, PROMPTS[0], _greedy(index)))


# ---------------------------------------------------------------- text API


@pytest.fixture
def tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["the quick brown fox jumps over the lazy dog"])


def test_generate_many_prompts_equals_generate_text_for_each(tokenizer: Tokenizer) -> None:
    model = _model(vocab_size=tokenizer.vocab_size, pos_emb="rope", seed=1, block=64)
    prompts = ["the fox", "a", "over the lazy", "dog jumps", "q"]
    sampling = _greedy(20)
    free = ["".join(generate_text(model, tokenizer, p, sampling)) for p in prompts]
    stop = [free[0][5:7], free[2][3:5]]  # stop strings that some rows meet
    alone = ["".join(generate_text(model, tokenizer, p, sampling, stop)) for p in prompts]
    together = list(generate(model, tokenizer, prompts, sampling, stop, batch_size=2))
    assert together == alone
    cut = [len(a) < len(f) for a, f in zip(alone, free, strict=True)]
    assert cut[0]
    assert cut[2]
    assert not all(cut)
    assert all(f.startswith(a) for a, f in zip(alone, free, strict=True))


def test_generate_one_prompt_streams_like_generate_text(tokenizer: Tokenizer) -> None:
    model = _model(vocab_size=tokenizer.vocab_size, pos_emb="rope", seed=1)
    pieces = list(generate(model, tokenizer, "the fox", _greedy(20)))
    assert pieces == list(generate_text(model, tokenizer, "the fox", _greedy(20)))
    assert len(pieces) > 5


def test_beam_text_is_the_best_beam_cut_at_the_stop_string(tokenizer: Tokenizer) -> None:
    model = _model(vocab_size=tokenizer.vocab_size, pos_emb="rope", seed=1)
    sampling, prompt, eot = _greedy(20, beams=3), tokenizer.encode("the fox"), tokenizer.eot_id
    full = tokenizer.decode(beam_search(model, [prompt], sampling, stop_ids=[eot])[0][0][1])
    assert "".join(generate_text(model, tokenizer, "the fox", sampling)) == full
    assert len(full) >= 8
    stop = full[6:8]
    found = beam_search(
        model,
        [prompt],
        sampling,
        stop_ids=[eot],
        stop_when=lambda ids: stop in tokenizer.decode(ids),
    )
    text = tokenizer.decode(found[0][0][1])
    assert stop in text  # the best hypothesis ended at the stop string
    cut = "".join(generate_text(model, tokenizer, "the fox", sampling, [stop]))
    assert cut == text[: text.find(stop)]


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"beams": 0}, "--beams must be >= 1"),
        ({"beams": 4, "temperature": 0.7}, "--beams 4 searches deterministically"),
        ({"beams": 2, "temperature": 0.0, "top_k": 5}, "--top-k"),
        ({"repetition_penalty": 0.0}, "--repetition-penalty"),
        ({"repetition_penalty": -1.2}, "--repetition-penalty"),
        ({"no_repeat_ngram_size": -1}, "--no-repeat-ngram-size"),
        ({"min_new_tokens": 5, "max_new_tokens": 4}, "--min-new-tokens"),
        ({"length_penalty": float("nan")}, "--length-penalty"),
    ],
)
def test_sampling_config_rejects_bad_generation_values(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        SamplingConfig(**kwargs)


def test_generating_with_a_bert_says_it_needs_a_gpt(tokenizer: Tokenizer) -> None:
    from lmforge.model import BERT

    cfg = ModelConfig(arch="bert", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=97)
    bert = BERT(cfg)
    with pytest.raises(ConfigError, match=r"cannot generate with a bert model.*model.arch=gpt"):
        list(generate_text(bert, tokenizer, "hi", _greedy(3)))
    with pytest.raises(ConfigError, match="causal language model"):
        list(generate_batch_tokens(bert, [[1, 2]], _greedy(3)))
