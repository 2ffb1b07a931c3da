"""Fuzzing Hugging Face config.json files: config_from_hf returns a valid ModelConfig or raises
an LMForgeError with a message, for wrong types, huge or negative sizes, nested garbage and
truncated files."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, LMForgeError
from lmforge.interop.hf_config import SUPPORTED, config_from_hf

from .profiles import fuzz_settings, timeout_s, user_error_or_result

pytestmark = pytest.mark.timeout(timeout_s())

GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 97,
    "n_positions": 32,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "activation_function": "gelu_new",
}
LLAMA = {
    "model_type": "llama",
    "vocab_size": 97,
    "max_position_embeddings": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}
NEOX = {
    "model_type": "gpt_neox",
    "vocab_size": 97,
    "max_position_embeddings": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_size": 32,
    "rotary_pct": 1.0,
    "use_parallel_residual": False,
    "intermediate_size": 128,
}
BERT = {
    "model_type": "bert",
    "vocab_size": 97,
    "max_position_embeddings": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 128,
    "hidden_act": "gelu",
}
VALID = [GPT2, LLAMA, NEOX, BERT]
KEYS = sorted(
    {key for config in VALID for key in config}
    | {
        "head_dim",
        "sliding_window",
        "use_sliding_window",
        "attention_bias",
        "mlp_bias",
        "tie_word_embeddings",
        "rope_parameters",
        "layer_norm_eps",
        "rms_norm_eps",
        "initializer_range",
        "type_vocab_size",
        "architectures",
        "n_inner",
        "resid_pdrop",
        "attention_dropout",
        "hidden_dropout",
        "rotary_emb_base",
        "layer_norm_epsilon",
    }
)
garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([*SUPPORTED, "gelu", "silu", "llama3", "default"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict:
    """A valid config with some keys replaced by garbage, removed, or made huge."""
    config = dict(draw(st.sampled_from(VALID)))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        action = draw(st.sampled_from(["garbage", "drop", "huge", "zero", "negative"]))
        if action == "drop":
            config.pop(key, None)
        else:
            config[key] = {"garbage": draw(garbage), "huge": 10**12, "zero": 0, "negative": -4}[
                action
            ]
    return config


def _check(config: object) -> None:
    result = user_error_or_result(lambda: config_from_hf(config))  # type: ignore[arg-type]
    if isinstance(result, ModelConfig):  # typed as a ModelConfig says
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head"):
            value = getattr(result, name)
            assert isinstance(value, int), (name, value)
            assert not isinstance(value, bool), (name, value)
        for name in ("dropout", "ln_eps", "init_std", "rope_theta"):
            assert isinstance(getattr(result, name), float), name
        assert isinstance(result.tie_weights, bool)


@fuzz_settings(ci_examples=300)
@given(config=mutated_configs())
def test_mutated_configs_map_or_raise_a_user_error(config: dict) -> None:
    _check(config)


@fuzz_settings(ci_examples=100)
@given(config=garbage)
def test_nested_garbage_maps_or_raises_a_user_error(config: object) -> None:
    _check(config)


@fuzz_settings(ci_examples=100)
@given(config=st.sampled_from(VALID), cut=st.integers(0, 400))
def test_truncated_config_files_are_user_errors(tmp_path: Path, config: dict, cut: int) -> None:
    from lmforge.interop.hf import import_hf

    source = tmp_path / "hf"
    source.mkdir(exist_ok=True)
    text = json.dumps(config)
    (source / "config.json").write_text(text[: min(cut, len(text) - 1)], encoding="utf-8")
    with pytest.raises(LMForgeError):
        import_hf(str(source), tmp_path / "out", overwrite=True)


# ---------------------------------------------------------------- regressions the fuzzer found


@pytest.mark.parametrize(
    ("base", "change"),
    [
        (GPT2, {"n_embd": "32"}),  # TypeError: 4 * "32" reached ModelConfig
        (LLAMA, {"num_attention_heads": 0}),  # ZeroDivisionError: hidden // heads
        (LLAMA, {"hidden_act": ["silu"]}),
        (GPT2, {"activation_function": ["gelu"]}),  # TypeError: unhashable list
        (GPT2, {"tie_word_embeddings": "yes"}),  # a str in a bool field
        (LLAMA, {"rope_theta": 10**400}),  # OverflowError in float()
        (LLAMA, {"rope_scaling": [1, 2]}),  # TypeError in dict()
        (LLAMA, {"intermediate_size": None}),
        (GPT2, {"architectures": [1]}),  # TypeError in str.join
    ],
    ids=repr,
)
def test_wrong_types_in_config_json_are_user_errors(base: dict, change: dict) -> None:
    with pytest.raises(LMForgeError, match=r"HF config|n_head"):
        config_from_hf({**base, **change})


def test_a_config_that_is_not_an_object_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="JSON object"):
        config_from_hf([GPT2])  # type: ignore[arg-type]
