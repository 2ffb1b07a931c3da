"""Fuzzing the generation flags (temperature, top-k, top-p, repetition penalty, n-gram ban, min
and max new tokens, beams, length penalty, seed, stop strings) on a tiny random-initialised GPT:
every combination generates text or raises an LMForgeError with a message."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.errors import ConfigError
from lmforge.generation.loop import generate
from lmforge.generation.sampling import sample_next
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer

from .profiles import fuzz_settings, timeout_s, user_error_or_result

pytestmark = pytest.mark.timeout(timeout_s())

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, 1e-300, 1e-45, 1e-8, 0.5, 1.0, 1.2, 1e300]
)
ints = st.integers(-3, 12) | st.sampled_from([2**31, 2**63, 2**64, -(2**70)])
flags = st.fixed_dictionaries(
    {"max_new_tokens": st.integers(-2, 10)},  # bounded: the loop is linear in it
    optional={
        "min_new_tokens": st.integers(-2, 12),
        "temperature": floats,
        "top_k": ints,
        "top_p": floats,
        "repetition_penalty": floats,
        "no_repeat_ngram_size": ints,
        "beams": st.integers(-1, 4) | st.just(200),  # more beams than the vocabulary
        "length_penalty": floats,
        "early_stopping": st.booleans(),
        "seed": st.none() | ints,
    },
)
stops = st.lists(
    st.text(max_size=4) | st.sampled_from(["", "\n", "e", "<|endoftext|>"]), max_size=3
)


@pytest.fixture(scope="module")
def tiny() -> tuple[GPT, Tokenizer]:
    tokenizer = Tokenizer.train_char(["the quick brown fox jumps over the lazy dog\n"])
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tokenizer.vocab_size
    )
    return GPT(cfg).eval(), tokenizer


def _generate(
    model: GPT, tokenizer: Tokenizer, prompt: str | list[str], values: dict, stop: list[str]
):
    sampling = SamplingConfig(**values)
    if isinstance(prompt, str):
        return "".join(generate(model, tokenizer, prompt, sampling, stop))
    return list(generate(model, tokenizer, prompt, sampling, stop, batch_size=2))


@fuzz_settings(ci_examples=60)
@given(
    values=flags,
    stop=stops,
    prompt=st.text(max_size=40) | st.lists(st.text(max_size=10), min_size=1, max_size=3),
)
def test_generation_flags_generate_or_raise_a_user_error(tiny, values, stop, prompt) -> None:
    model, tokenizer = tiny
    result = user_error_or_result(lambda: _generate(model, tokenizer, prompt, values, stop))
    if isinstance(result, str):
        assert not any(s and s in result for s in stop)  # a stop string is left out


@fuzz_settings(ci_examples=200)
@given(
    logits=st.lists(st.floats(-1e30, 1e30) | st.sampled_from([-math.inf]), min_size=2, max_size=8),
    temperature=st.floats(min_value=1e-300, max_value=1e300),
    top_k=st.integers(0, 10),
    top_p=st.floats(min_value=1e-6, max_value=1.0),
)
def test_sample_next_draws_a_token_of_positive_probability(
    logits, temperature, top_k, top_p
) -> None:
    row = torch.tensor([logits])
    if row.isinf().all():
        return  # every token banned: nothing to draw
    token = int(sample_next(row, temperature, top_k, top_p, torch.Generator().manual_seed(0)))
    assert logits[token] > -math.inf


# ---------------------------------------------------------------- regressions the fuzzer found


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing() -> None:
    """logits / 1e-45 overflowed to inf, softmax gave NaN and multinomial raised."""
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert int(sample_next(logits, temperature=1e-45)) == 1
    assert int(sample_next(torch.tensor([[-math.inf, 0.0]]), temperature=3.5e38)) == 1
    assert int(sample_next(torch.tensor([[math.inf, math.inf, 0.0]]), temperature=1.0)) < 2


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": math.inf},
        {"repetition_penalty": math.inf},
        {"seed": 2**64},
        {"seed": -1},
        {"temperature": -0.0 - 1},
    ],
    ids=repr,
)
def test_unusable_sampling_values_are_config_errors(values: dict) -> None:
    with pytest.raises(ConfigError):
        SamplingConfig(**values)
