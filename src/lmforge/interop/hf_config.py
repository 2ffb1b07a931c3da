"""Hugging Face config.json <-> our ModelConfig: which architectures map, and how.

Each covered architecture is the exact twin of one lmforge model (see hf_layout.py for the
tensors): GPT-2, GPT-NeoX (sequential residual, full rotary), BERT, and the Llama family —
Llama, Mistral without a sliding window, Qwen2 (q/k/v biases), Qwen3 (q/k norm). What no twin
holds is refused, with the reason, in both directions.
"""

from typing import Any

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED = ("gpt2", "gpt_neox", "bert", *LLAMA_FAMILY)
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "bert": "BertForPreTraining",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


# The JSON type of every config.json key the mapping reads (None allowed where HF writes null).
_INTEGERS = (
    "vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "max_position_embeddings",
    "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
    "type_vocab_size",
)  # fmt: skip
_OPTIONAL_INTEGERS = ("n_inner", "head_dim", "sliding_window", "num_key_value_heads")
_NUMBERS = (
    "resid_pdrop", "hidden_dropout_prob", "attention_dropout", "hidden_dropout",
    "layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "initializer_range", "rope_theta",
    "rotary_pct", "partial_rotary_factor", "rotary_emb_base", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings",
)  # fmt: skip
_BOOLEANS = (
    "tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window",
    "use_parallel_residual",
)  # fmt: skip
_STRINGS = (
    "model_type", "activation_function", "hidden_act", "position_embedding_type", "rope_type",
    "type",
)  # fmt: skip
_MAPPINGS = ("rope_scaling", "rope_parameters")


def _type_error(key: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(
        f"HF config: {key} must be {expected}, got {value!r}; is it a config written by "
        "transformers' save_pretrained?"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return abs(float(value)) < float("inf")
    except OverflowError:  # an integer beyond any float
        return False


def check_json_types(hf_config: Any, where: str = "") -> None:
    """Refuse a config.json whose keys read by the mapping hold the wrong JSON type (a string
    for a size, a list for an activation, NaN for an epsilon), so none reaches arithmetic."""
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"the HF config{where} must hold a JSON object, got {hf_config!r}")
    checks = [
        (_INTEGERS, _is_int, "an integer"),
        (_OPTIONAL_INTEGERS, lambda v: v is None or _is_int(v), "an integer or null"),
        (_NUMBERS, _is_finite_number, "a finite number"),
        (_BOOLEANS, lambda v: isinstance(v, bool), "true or false"),
        (_STRINGS, lambda v: isinstance(v, str), "a string"),
        (_MAPPINGS, lambda v: v is None or isinstance(v, dict), "an object or null"),
    ]
    for keys, ok, expected in checks:
        for key in keys:
            if key in hf_config and not ok(hf_config[key]):
                raise _type_error(
                    f"{where.lstrip('.')}.{key}".lstrip("."), hf_config[key], expected
                )
    architectures = hf_config.get("architectures")
    if architectures is not None and not (
        isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    ):
        raise _type_error("architectures", architectures, "a list of class names")
    for key in _MAPPINGS:
        if hf_config.get(key) is not None:
            check_json_types(hf_config[key], where=f".{key}")


def model_type_of(hf_config: dict[str, Any]) -> str:
    """The Hugging Face model_type, checked against what lmforge can map."""
    check_json_types(hf_config)
    model_type = hf_config.get("model_type", "")
    if model_type not in SUPPORTED:
        raise CheckpointError(
            f"unsupported architecture {model_type or 'unknown'!r} "
            f"({', '.join(hf_config.get('architectures') or [])}); lmforge imports "
            f"{', '.join(SUPPORTED)}"
        )
    return model_type


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"unsupported activation {name!r}; supported: {list(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _require_equal(what: str, got: Any, expected: Any) -> None:
    if got != expected:
        raise CheckpointError(f"unsupported {what}={got!r}: lmforge models need {expected!r}")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig twin of a Hugging Face config.json."""
    model_type = model_type_of(hf)
    try:
        return _config_from_hf(hf, model_type)
    except KeyError as exc:
        raise CheckpointError(
            f"config.json of this {model_type} lacks {exc.args[0]!r}; is it a complete "
            "save_pretrained directory?"
        ) from None


def _config_from_hf(hf: dict[str, Any], model_type: str) -> ModelConfig:
    if model_type == "gpt2":
        n_embd = hf["n_embd"]
        _require_equal("n_inner", hf.get("n_inner") or 4 * n_embd, 4 * n_embd)
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            _require_equal(flag, bool(hf.get(flag, False)), False)
        return ModelConfig(
            arch="gpt",
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=n_embd,
            dropout=float(hf.get("resid_pdrop", 0.0)),
            bias=True,
            pos_emb="learned",
            tie_weights=hf.get("tie_word_embeddings", True),
            activation=_activation(hf.get("activation_function", "gelu_new")),
            ln_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    if model_type == "gpt_neox":
        return _neox_config(hf)
    if model_type in LLAMA_FAMILY:
        return _llama_config(hf)
    hidden = hf["hidden_size"]
    _require_equal(
        "position_embedding_type", hf.get("position_embedding_type", "absolute"), "absolute"
    )
    return ModelConfig(
        arch="bert",
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hidden,
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        bias=True,
        pos_emb="learned",
        activation=_activation(hf.get("hidden_act", "gelu")),
        ln_eps=float(hf.get("layer_norm_eps", 1e-12)),
        init_std=float(hf.get("initializer_range", 0.02)),
        type_vocab_size=hf.get("type_vocab_size", 2),
        mlp_hidden=_mlp_hidden(hf.get("intermediate_size", 4 * hidden), hidden),
    )


def _mlp_hidden(width: int, hidden: int) -> int:
    """model.mlp_hidden for an MLP of `width`: 0 (the default 4 n_embd) when it is that."""
    return 0 if width == 4 * hidden else width


def _rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from rope_parameters (transformers 5) or the older keys."""
    rope = dict(hf.get("rope_scaling") or {}) | dict(hf.get("rope_parameters") or {})
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise CheckpointError(
            f"unsupported rope_type {kind!r}: lmforge imports default and llama3 RoPE scaling"
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, {"rope_type": "llama3", **{key: rope[key] for key in keys}}


def _llama_config(hf: dict[str, Any]) -> ModelConfig:
    """Llama, Mistral, Qwen2 and Qwen3: RMSNorm, SwiGLU, RoPE, grouped-query attention."""
    model_type, hidden, heads = hf["model_type"], hf["hidden_size"], hf["num_attention_heads"]
    context = hf["max_position_embeddings"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window is not None and window < context:
        raise CheckpointError(
            f"this {model_type} attends through a sliding window of {window} tokens over a "
            f"context of {context}; lmforge attends to the whole context, so the model would "
            "not be the same. Checkpoints with sliding_window null (or >= the context) import"
        )
    _require_equal("hidden_act", hf.get("hidden_act", "silu"), "silu")
    attention_bias = bool(hf.get("attention_bias", False))
    if model_type == "llama":
        _require_equal(
            "mlp_bias (with attention_bias)", bool(hf.get("mlp_bias", False)), attention_bias
        )
    elif attention_bias:  # Qwen3 and Mistral: biases on attention only
        raise CheckpointError(f"unsupported attention_bias=True for {model_type}")
    head_dim = hf.get("head_dim") or (hidden // heads if heads > 0 else 0)
    theta, scaling = _rope_settings(hf)
    return ModelConfig(
        arch="gpt",
        vocab_size=hf["vocab_size"],
        block_size=context,
        n_layer=hf["num_hidden_layers"],
        n_head=heads,
        n_kv_head=hf.get("num_key_value_heads") or heads,
        n_embd=hidden,
        head_size=0 if head_dim * heads == hidden else head_dim,
        mlp_hidden=hf["intermediate_size"],
        dropout=float(hf.get("attention_dropout", 0.0)),
        bias=attention_bias,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        pos_emb="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        tie_weights=bool(hf.get("tie_word_embeddings", False)),
        activation="swiglu",
        norm="rmsnorm",
        ln_eps=float(hf.get("rms_norm_eps", 1e-6)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _neox_config(hf: dict[str, Any]) -> ModelConfig:
    hidden = hf["hidden_size"]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    _require_equal("use_parallel_residual", hf.get("use_parallel_residual", True), False)
    _require_equal("rotary_pct", rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)), 1.0)
    _require_equal("rope_type", rope.get("rope_type", "default"), "default")
    _require_equal("intermediate_size", hf.get("intermediate_size", 4 * hidden), 4 * hidden)
    return ModelConfig(
        arch="gpt",
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hidden,
        dropout=float(hf.get("hidden_dropout", 0.0)),
        bias=True,
        pos_emb="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
        tie_weights=hf.get("tie_word_embeddings", False),
        activation=_activation(hf.get("hidden_act", "gelu")),
        ln_eps=float(hf.get("layer_norm_eps", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def export_model_type(cfg: ModelConfig) -> str:
    """Which Hugging Face architecture holds our model exactly (refusing what none holds)."""
    if cfg.arch == "bert":
        if cfg.ngram_buckets:
            raise CheckpointError(
                "cannot export model.ngram_buckets: BertModel has no hashed n-gram embeddings; "
                "use the run with lmforge (predict, evaluate, serve)"
            )
        if cfg.attn_width != cfg.n_embd:
            raise CheckpointError(
                f"cannot export a BERT with pruned heads (attention width {cfg.attn_width}, "
                f"n_embd {cfg.n_embd}): BertModel needs n_head * head size == n_embd"
            )
        return "bert"
    if cfg.pos_emb == "sincos":
        raise CheckpointError(
            "cannot export model.pos_emb=sincos: no transformers decoder adds fixed sinusoidal "
            "positions; train with model.pos_emb=learned (GPT-2) or rope (GPT-NeoX, Llama)"
        )
    llama_like = (cfg.norm, cfg.activation, cfg.pos_emb) == ("rmsnorm", "swiglu", "rope")
    if cfg.norm == "rmsnorm" or cfg.activation in ("swiglu", "relu2") or cfg.qk_norm:
        if not llama_like:
            raise CheckpointError(
                f"no transformers architecture has model.norm={cfg.norm} with "
                f"model.activation={cfg.activation} and model.pos_emb={cfg.pos_emb}: the Llama "
                "family needs rmsnorm, swiglu and rope; GPT-2 and GPT-NeoX need layernorm and gelu"
            )
        return _llama_type(cfg)
    if cfg.kv_heads != cfg.n_head:
        raise CheckpointError(
            f"cannot export grouped-query attention (n_kv_head={cfg.kv_heads}, "
            f"n_head={cfg.n_head}) with LayerNorm and GELU: GPT-2 and GPT-NeoX need "
            "n_kv_head == n_head"
        )
    if cfg.attn_width != cfg.n_embd or cfg.mlp_width != 4 * cfg.n_embd or cfg.qkv_bias:
        raise CheckpointError(
            f"cannot export this model as GPT-2 or GPT-NeoX (attention width {cfg.attn_width}, "
            f"MLP width {cfg.mlp_width}, n_embd {cfg.n_embd}, qkv_bias {cfg.qkv_bias}): they "
            "need n_head * head size == n_embd, an MLP of 4 * n_embd and biases everywhere or "
            "nowhere"
        )
    return "gpt2" if cfg.pos_emb == "learned" else "gpt_neox"


def _llama_type(cfg: ModelConfig) -> str:
    """Qwen3 for q/k norm, Qwen2 for q/k/v biases alone, else Llama (biases everywhere or not)."""
    if cfg.qk_norm:
        if cfg.bias or cfg.qkv_bias:
            raise CheckpointError(
                "cannot export q/k norm with biases: Qwen3 has neither MLP biases"
            )
        return "qwen3"
    if cfg.qkv_bias and not cfg.bias:
        if cfg.attn_width != cfg.n_embd:
            raise CheckpointError(
                "cannot export q/k/v biases with a head size other than n_embd / n_head: Qwen2 "
                "derives its head size"
            )
        return "qwen2"
    return "llama"


def config_to_hf(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """A Hugging Face config.json for our model (special_ids: bos/eos/pad token ids)."""
    model_type = export_model_type(cfg)
    act = "gelu" if cfg.activation == "gelu" else "gelu_new"
    common = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
        **{f"{k}_token_id": v for k, v in special_ids.items()},
    }
    if model_type in LLAMA_FAMILY:
        return {**common, **_llama_config_to_hf(cfg, model_type)}
    if model_type == "gpt2":
        return {
            **common,
            "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": None,
            "activation_function": act,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.ln_eps,
            "tie_word_embeddings": cfg.tie_weights,
            "scale_attn_weights": True,
            "use_cache": True,
        }
    shape = {
        "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.mlp_width,
        "hidden_act": act,
        "max_position_embeddings": cfg.block_size,
        "layer_norm_eps": cfg.ln_eps,
    }
    if model_type == "gpt_neox":
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0}
        return {
            **common,
            **shape,
            "use_parallel_residual": False,
            "rotary_pct": 1.0,
            "rotary_emb_base": cfg.rope_theta,
            "rope_parameters": rope,
            "attention_bias": True,
            "hidden_dropout": cfg.dropout,
            "attention_dropout": cfg.dropout,
            "tie_word_embeddings": cfg.tie_weights,
            "use_cache": True,
        }
    return {
        **common,
        **shape,
        "type_vocab_size": max(cfg.type_vocab_size, 1),
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _llama_config_to_hf(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    out = {
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.ln_eps,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_weights,
        "attention_dropout": cfg.dropout,
        "use_cache": True,
    }
    if model_type == "llama":
        out |= {"attention_bias": cfg.bias, "mlp_bias": cfg.bias}
    elif model_type == "qwen3":
        out |= {"attention_bias": False, "use_sliding_window": False, "sliding_window": None}
    else:
        out |= {"use_sliding_window": False, "sliding_window": None}
        del out["head_dim"]  # Qwen2 derives it: hidden_size / num_attention_heads
    return out
