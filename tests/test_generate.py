"""Sampling (greedy, temperature, top-k, top-p, seeds) and generation with the KV cache."""

import logging

import pytest
import torch

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.generation.loop import generate_text, generate_tokens, sample_next
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer

BLOCK = 16
TEXT = "the quick brown fox jumps over the lazy dog"


def _model(vocab_size: int = 97, pos_emb: str = "learned", seed: int = 0) -> GPT:
    """A tiny random GPT whose greedy output varies (large init, untied head)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=BLOCK,
        vocab_size=vocab_size,
        init_std=0.5,
        tie_weights=False,
        pos_emb=pos_emb,
    )
    return GPT(cfg).eval()


def _greedy(max_new_tokens: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)


def _draws(logits: torch.Tensor, n: int, seed: int = 0, **kwargs: float) -> torch.Tensor:
    """n samples from one row of logits (V,), drawn as one batch of n identical rows."""
    generator = torch.Generator().manual_seed(seed)
    return sample_next(logits.expand(n, -1), generator=generator, **kwargs)


# ---------------------------------------------------------------- sample_next


def test_temperature_zero_is_argmax(generator: torch.Generator) -> None:
    logits = torch.randn(8, 50, generator=generator)
    chosen = sample_next(logits, temperature=0.0, top_k=3, top_p=0.5, generator=generator)
    assert chosen.shape == (8,)
    assert torch.equal(chosen, logits.argmax(dim=-1))


def test_temperature_scales_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = _draws(probs.log(), 40_000, temperature=2.0)
    expected = torch.softmax(probs.log() / 2.0, dim=-1)
    frequencies = torch.bincount(draws, minlength=4) / draws.numel()
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_k_never_samples_outside_the_k_largest(generator: torch.Generator, k: int) -> None:
    logits = torch.randn(50, generator=generator)
    draws = _draws(logits, 5000, temperature=3.0, top_k=k)
    allowed = set(torch.topk(logits, k).indices.tolist())
    assert set(draws.tolist()) == allowed  # nothing outside, and every allowed one is reachable


@pytest.mark.parametrize(
    ("top_p", "support"),
    [(0.3, {2}), (0.65, {2, 0}), (0.75, {2, 0, 4}), (0.95, {2, 0, 4, 1}), (1.0, {0, 1, 2, 3, 4})],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p: float, support: set[int]) -> None:
    # token:             0     1     2     3     4
    probs = torch.tensor([0.3, 0.08, 0.4, 0.02, 0.2])
    draws = _draws(probs.log(), 20_000, temperature=1.0, top_p=top_p)
    assert set(draws.tolist()) == support
    # the kept tokens are renormalised, keeping their relative probabilities
    kept = sorted(support)
    expected = probs[kept] / probs[kept].sum()
    frequencies = torch.bincount(draws, minlength=5)[kept] / draws.numel()
    torch.testing.assert_close(frequencies, expected, atol=0.02, rtol=0)


def test_top_k_and_top_p_combine() -> None:
    probs = torch.tensor([0.3, 0.08, 0.4, 0.02, 0.2])
    # top-k 3 keeps {2, 0, 4} renormalised to (0.444, 0.333, 0.222): top-p 0.7 then keeps {2, 0}
    draws = _draws(probs.log(), 5000, temperature=1.0, top_k=3, top_p=0.7)
    assert set(draws.tolist()) == {0, 2}


def test_sample_next_same_seed_same_tokens(generator: torch.Generator) -> None:
    logits = torch.randn(64, 97, generator=generator)
    first = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    again = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    other = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ---------------------------------------------------------------- generate_tokens


def _reference_tokens(
    model: GPT,
    prompt: list[int],
    n: int,
    sampling: SamplingConfig | None = None,
) -> list[int]:
    """No cache: recompute the full forward over the model's window every step.

    The window is what generate_tokens keeps in its cache: the whole context until it holds
    block_size tokens, then it restarts from the last 3/4 of the context.
    """
    generator = None
    if sampling is not None and sampling.seed is not None:
        generator = torch.Generator().manual_seed(sampling.seed)
    context, window, out = list(prompt), list(prompt), []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([window]))[:, -1]
        if sampling is None:
            token = int(logits.argmax(dim=-1)[0])
        else:
            t, k, p = sampling.temperature, sampling.top_k, sampling.top_p
            token = int(sample_next(logits, t, k, p, generator)[0])
        out.append(token)
        context.append(token)
        window = context[-(BLOCK * 3 // 4) :] if len(window) >= BLOCK else [*window, token]
    return out


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_greedy_generation_equals_uncached_loop(pos_emb: str) -> None:
    model = _model(pos_emb=pos_emb)
    prompt = [1, 2, 3, 4, 5]
    n = BLOCK - len(prompt)  # stays inside the context: the window is the whole context
    got = list(generate_tokens(model, prompt, _greedy(n)))
    context = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            context.append(int(model(torch.tensor([context]))[0, -1].argmax()))
    assert got == context[len(prompt) :]
    assert len(set(got)) > 3  # the model does not just repeat one token


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("prompt_len", [1, 5, BLOCK - 1])
def test_greedy_generation_past_block_size_restarts_the_cache(
    pos_emb: str, prompt_len: int
) -> None:
    model = _model(pos_emb=pos_emb)
    prompt = [(7 * i + 3) % 97 for i in range(prompt_len)]
    n = 3 * BLOCK + 5  # several restarts
    got = list(generate_tokens(model, prompt, _greedy(n)))
    assert got == _reference_tokens(model, prompt, n)
    assert len(got) == n
    assert len(set(got)) > 5


def test_sampled_generation_equals_uncached_loop_with_same_seed() -> None:
    model = _model()
    sampling = SamplingConfig(max_new_tokens=40, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    got = list(generate_tokens(model, [4, 8, 15], sampling))
    assert got == _reference_tokens(model, [4, 8, 15], 40, sampling)


def test_generation_same_seed_same_tokens_other_seed_differs() -> None:
    model = _model()

    def run(seed: int) -> list[int]:
        sampling = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=seed)
        return list(generate_tokens(model, [1, 2, 3], sampling))

    first = run(11)
    assert len(first) == 30
    assert run(11) == first
    assert run(12) != first


def test_generation_stops_at_a_stop_id_without_emitting_it() -> None:
    model = _model()
    full = list(generate_tokens(model, [1, 2, 3], _greedy(30)))
    # the first token that has not appeared before, at least 3 tokens in
    index = next(i for i in range(3, len(full)) if full[i] not in full[:i])
    stopped = list(generate_tokens(model, [1, 2, 3], _greedy(30), stop_ids=[full[index]]))
    assert stopped == full[:index]


def test_max_new_tokens_is_respected() -> None:
    model = _model()
    assert list(generate_tokens(model, [1], _greedy(0))) == []
    assert len(list(generate_tokens(model, [1], _greedy(7)))) == 7


def test_long_prompt_is_cropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    prompt = [(5 * i + 1) % 97 for i in range(2 * BLOCK + 3)]
    with caplog.at_level(logging.WARNING, logger="lmforge.generation.loop"):
        got = list(generate_tokens(model, prompt, _greedy(10)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "exceeds the context" in warnings[0].getMessage()
    assert got == _reference_tokens(model, prompt[-(BLOCK - 1) :], 10)


def test_prompt_that_fits_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    with caplog.at_level(logging.WARNING, logger="lmforge.generation.loop"):
        list(generate_tokens(model, list(range(BLOCK - 1)), _greedy(3)))
    assert not caplog.records


# ---------------------------------------------------------------- generate_text


@pytest.fixture
def tokenizer() -> Tokenizer:
    return Tokenizer.train_char([TEXT])


def _text_model(tokenizer: Tokenizer) -> GPT:
    return _model(vocab_size=tokenizer.vocab_size, pos_emb="rope", seed=1)


def _full_text(model: GPT, tokenizer: Tokenizer, prompt: str, n: int) -> str:
    ids = list(generate_tokens(model, tokenizer.encode(prompt), _greedy(n)))
    return tokenizer.decode(ids)


def test_generate_text_streams_pieces_that_join_to_the_full_text(tokenizer: Tokenizer) -> None:
    model = _text_model(tokenizer)
    pieces = list(generate_text(model, tokenizer, "the fox", _greedy(30), stop=["qqqq"]))
    ids = list(generate_tokens(model, tokenizer.encode("the fox"), _greedy(30)))
    assert tokenizer.eot_id not in ids  # otherwise the text would end early
    assert "".join(pieces) == tokenizer.decode(ids)
    assert len(pieces) > 5  # streamed, not returned in one piece


def test_generate_text_stops_at_a_stop_string(tokenizer: Tokenizer) -> None:
    model = _text_model(tokenizer)
    full = _full_text(model, tokenizer, "the fox", 40)
    stop = full[12:14]
    expected = full[: full.find(stop)]
    assert len(expected) >= 5
    pieces = list(generate_text(model, tokenizer, "the fox", _greedy(40), stop=[stop, "qqqq"]))
    text = "".join(pieces)
    assert text == expected
    assert stop not in text


def test_generate_text_stops_at_end_of_text(tokenizer: Tokenizer) -> None:
    """Relabel one generated token as <|endoftext|>: the text must end right before it."""
    model = _text_model(tokenizer)
    prompt = "the fox"
    ids = list(generate_tokens(model, tokenizer.encode(prompt), _greedy(30)))
    eot = tokenizer.eot_id
    assert eot not in ids
    prompt_ids = set(tokenizer.encode(prompt))
    cut = next(i for i in range(4, len(ids)) if ids[i] not in ids[:i] and ids[i] not in prompt_ids)
    target = ids[cut]
    # swapping two rows of the (untied) embedding and head relabels the two tokens exactly
    with torch.no_grad():
        for weight in (model.tok_emb.weight, model.lm_head.weight):
            weight[[target, eot]] = weight[[eot, target]]
    pieces = list(generate_text(model, tokenizer, prompt, _greedy(30)))
    assert "".join(pieces) == tokenizer.decode(ids[:cut])
