"""Hugging Face <-> lmforge: config translation and parameter-name mapping, as data.

Each covered Hugging Face architecture is the exact twin of one lmforge model: GPT-2 (our GPT
with learned positions), GPT-NeoX with sequential residuals and full rotary (our GPT with RoPE),
BERT, and the Llama family — Llama, Mistral (without a sliding window), Qwen2 (q/k/v biases) and
Qwen3 (q/k norm) — our GPT with RMSNorm, SwiGLU, RoPE and grouped-query attention. A `Rule` maps
one of our tensors to one or more of theirs; the layout changes (Conv1D transposes, fused or
split q/k/v and gate/up, the rotary pair order) live in tensor_to_ours / tensor_to_theirs.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError

# The file names of a Hugging Face model directory and of a PEFT adapter: their formats, which
# share some names with a run directory's (rundir/layout.py) but are not ours to rename.
HF_CONFIG = "config.json"
HF_GENERATION_CONFIG = "generation_config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_BIN_WEIGHTS = "pytorch_model.bin"
HF_BIN_INDEX = "pytorch_model.bin.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_CHAT_TEMPLATE = "chat_template.jinja"  # where transformers saves it; older: tokenizer_config
HF_SPECIAL_TOKENS = "special_tokens_map.json"
HF_VOCAB_JSON = "vocab.json"
HF_VOCAB_TXT = "vocab.txt"
HF_MERGES = "merges.txt"
PEFT_DIR = "adapter"  # inside an export of an adapter run: the PEFT adapter
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

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
BASE_PREFIXES = {
    "gpt2": "transformer.",
    "gpt_neox": "gpt_neox.",
    "bert": "bert.",
    **dict.fromkeys(LLAMA_FAMILY, "model."),
}
IGNORED_SUFFIXES = (
    ".attn.bias",
    ".attn.masked_bias",
    "position_ids",
    ".attention.bias",
    ".attention.masked_bias",
    ".rotary_emb.inv_freq",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
)  # buffers, and BERT's tied decoder
HEAD_ROOTS = ("lm_head.", "embed_out.", "cls.")  # top-level tensors outside the base model
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


@dataclass(frozen=True, slots=True)
class Rule:
    """Our tensor `ours` is made from their tensors `theirs` by `kind`."""

    ours: str
    theirs: tuple[str, ...]
    kind: str = "copy"  # copy | transpose (GPT-2 Conv1D) | concat (BERT q, k, v) | neox_qkv
    # | rope_qkv (Llama q, k, v: concatenated, q and k rows to adjacent rotary pairs)
    # | rope_vector (Qwen3 q/k norm weights: the same pair order)


# ---------------------------------------------------------------- configs


def model_type_of(hf_config: dict[str, Any]) -> str:
    """The Hugging Face model_type, checked against what lmforge can map."""
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
            dropout=hf.get("resid_pdrop", 0.0),
            bias=True,
            pos_emb="learned",
            tie_weights=hf.get("tie_word_embeddings", True),
            activation=_activation(hf.get("activation_function", "gelu_new")),
            ln_eps=hf.get("layer_norm_epsilon", 1e-5),
            init_std=hf.get("initializer_range", 0.02),
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
        dropout=hf.get("hidden_dropout_prob", 0.1),
        bias=True,
        pos_emb="learned",
        activation=_activation(hf.get("hidden_act", "gelu")),
        ln_eps=hf.get("layer_norm_eps", 1e-12),
        init_std=hf.get("initializer_range", 0.02),
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
    head_dim = hf.get("head_dim") or hidden // heads
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
        init_std=hf.get("initializer_range", 0.02),
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
        dropout=hf.get("hidden_dropout", 0.0),
        bias=True,
        pos_emb="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
        tie_weights=hf.get("tie_word_embeddings", False),
        activation=_activation(hf.get("hidden_act", "gelu")),
        ln_eps=hf.get("layer_norm_eps", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )


def export_model_type(cfg: ModelConfig) -> str:
    """Which Hugging Face architecture holds our model exactly (refusing what none holds)."""
    if cfg.arch == "bert":
        if cfg.attn_width != cfg.n_embd:
            raise CheckpointError(
                f"cannot export a BERT with pruned heads (attention width {cfg.attn_width}, "
                f"n_embd {cfg.n_embd}): BertModel needs n_head * head size == n_embd"
            )
        return "bert"
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


# ---------------------------------------------------------------- name rules


def _pairs(ours: str, theirs: str, kind: str = "copy") -> list[Rule]:
    return [
        Rule(f"{ours}.weight", (f"{theirs}.weight",), kind),
        Rule(f"{ours}.bias", (f"{theirs}.bias",)),
    ]


def _layer_norm(ours: str, theirs: str) -> list[Rule]:
    return _pairs(ours, theirs)


def rules_for(model_type: str, cfg: ModelConfig) -> list[Rule]:
    """Every mapped tensor of one architecture, in our names (base-model prefix stripped)."""
    if model_type in LLAMA_FAMILY:
        return _llama_rules(cfg)
    return {"gpt2": _gpt2_rules, "gpt_neox": _neox_rules, "bert": _bert_rules}[model_type](cfg)


def _weight_and_bias(ours: str, theirs: str, bias: bool) -> list[Rule]:
    return _pairs(ours, theirs) if bias else [Rule(f"{ours}.weight", (f"{theirs}.weight",))]


def _llama_rules(cfg: ModelConfig) -> list[Rule]:
    """Llama / Mistral / Qwen2 / Qwen3 (base prefix `model.`; RMSNorms have weights only)."""
    rules = [Rule("tok_emb.weight", ("embed_tokens.weight",))]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}", f"layers.{i}"
        attn = f"{theirs}.self_attn"
        qkv = tuple(f"{attn}.{x}_proj" for x in "qkv")
        rules.append(Rule(f"{ours}.ln_1.weight", (f"{theirs}.input_layernorm.weight",)))
        rules.append(Rule(f"{ours}.attn.qkv.weight", tuple(f"{n}.weight" for n in qkv), "rope_qkv"))
        if cfg.bias or cfg.qkv_bias:
            rules.append(Rule(f"{ours}.attn.qkv.bias", tuple(f"{n}.bias" for n in qkv), "rope_qkv"))
        if cfg.qk_norm:
            for x in "qk":
                name = f"{attn}.{x}_norm.weight"
                rules.append(Rule(f"{ours}.attn.{x}_norm.weight", (name,), "rope_vector"))
        rules += _weight_and_bias(f"{ours}.attn.proj", f"{attn}.o_proj", cfg.bias)
        rules.append(Rule(f"{ours}.ln_2.weight", (f"{theirs}.post_attention_layernorm.weight",)))
        gate_up = (f"{theirs}.mlp.gate_proj", f"{theirs}.mlp.up_proj")
        rules.append(Rule(f"{ours}.mlp.fc.weight", tuple(f"{n}.weight" for n in gate_up), "concat"))
        if cfg.bias:
            rules.append(Rule(f"{ours}.mlp.fc.bias", tuple(f"{n}.bias" for n in gate_up), "concat"))
        rules += _weight_and_bias(f"{ours}.mlp.proj", f"{theirs}.mlp.down_proj", cfg.bias)
    rules.append(Rule("ln_f.weight", ("norm.weight",)))
    if not cfg.tie_weights:
        rules.append(Rule("lm_head.weight", ("^lm_head.weight",)))
    return rules


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    rules = [Rule("tok_emb.weight", ("wte.weight",)), Rule("pos_emb.weight", ("wpe.weight",))]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}", f"h.{i}"
        rules += _layer_norm(f"{ours}.ln_1", f"{theirs}.ln_1")
        rules += _pairs(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn", "transpose")
        rules += _pairs(f"{ours}.attn.proj", f"{theirs}.attn.c_proj", "transpose")
        rules += _layer_norm(f"{ours}.ln_2", f"{theirs}.ln_2")
        rules += _pairs(f"{ours}.mlp.fc", f"{theirs}.mlp.c_fc", "transpose")
        rules += _pairs(f"{ours}.mlp.proj", f"{theirs}.mlp.c_proj", "transpose")
    rules += _layer_norm("ln_f", "ln_f")
    if not cfg.tie_weights:
        rules.append(Rule("lm_head.weight", ("^lm_head.weight",)))
    return rules


def _neox_rules(cfg: ModelConfig) -> list[Rule]:
    rules = [Rule("tok_emb.weight", ("embed_in.weight",))]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}", f"layers.{i}"
        rules += _layer_norm(f"{ours}.ln_1", f"{theirs}.input_layernorm")
        rules.append(
            Rule(
                f"{ours}.attn.qkv.weight",
                (f"{theirs}.attention.query_key_value.weight",),
                "neox_qkv",
            )
        )
        rules.append(
            Rule(f"{ours}.attn.qkv.bias", (f"{theirs}.attention.query_key_value.bias",), "neox_qkv")
        )
        rules += _pairs(f"{ours}.attn.proj", f"{theirs}.attention.dense")
        rules += _layer_norm(f"{ours}.ln_2", f"{theirs}.post_attention_layernorm")
        rules += _pairs(f"{ours}.mlp.fc", f"{theirs}.mlp.dense_h_to_4h")
        rules += _pairs(f"{ours}.mlp.proj", f"{theirs}.mlp.dense_4h_to_h")
    rules += _layer_norm("ln_f", "final_layer_norm")
    if not cfg.tie_weights:
        rules.append(Rule("lm_head.weight", ("^embed_out.weight",)))
    return rules


def _bert_rules(cfg: ModelConfig) -> list[Rule]:
    emb = "embeddings"
    rules = [
        Rule("tok_emb.weight", (f"{emb}.word_embeddings.weight",)),
        Rule("pos_emb.weight", (f"{emb}.position_embeddings.weight",)),
    ]
    if cfg.type_vocab_size:
        rules.append(Rule("type_emb.weight", (f"{emb}.token_type_embeddings.weight",)))
    rules += _layer_norm("emb_ln", f"{emb}.LayerNorm")
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}", f"encoder.layer.{i}"
        qkv = tuple(f"{theirs}.attention.self.{n}" for n in ("query", "key", "value"))
        rules.append(Rule(f"{ours}.attn.qkv.weight", tuple(f"{t}.weight" for t in qkv), "concat"))
        rules.append(Rule(f"{ours}.attn.qkv.bias", tuple(f"{t}.bias" for t in qkv), "concat"))
        rules += _pairs(f"{ours}.attn.proj", f"{theirs}.attention.output.dense")
        rules += _layer_norm(f"{ours}.ln_1", f"{theirs}.attention.output.LayerNorm")
        rules += _pairs(f"{ours}.mlp.fc", f"{theirs}.intermediate.dense")
        rules += _pairs(f"{ours}.mlp.proj", f"{theirs}.output.dense")
        rules += _layer_norm(f"{ours}.ln_2", f"{theirs}.output.LayerNorm")
    return [*rules, *_bert_head_rules()]


def _bert_head_rules() -> list[Rule]:
    """Heads sit outside the `bert.` base model; their names start with `^` (no prefix)."""
    return [
        *_pairs("pooler", "pooler.dense"),
        *_pairs("mlm_transform", "^cls.predictions.transform.dense"),
        *_layer_norm("mlm_ln", "^cls.predictions.transform.LayerNorm"),
        Rule("mlm_bias", ("^cls.predictions.bias",)),
        *_pairs("nsp_head", "^cls.seq_relationship"),
    ]


def normalise_names(names: Iterable[str], model_type: str) -> dict[str, str]:
    """Rule name -> their stored name: base prefix stripped, heads marked `^`, old names fixed.

    Works whether the file holds a base model (GPT2Model, BertModel) or one with heads.
    """
    prefix, out = BASE_PREFIXES[model_type], {}
    for name in names:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        fixed = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        fixed = fixed.replace("LayerNorm.beta", "LayerNorm.bias")
        if fixed.startswith(prefix):
            fixed = fixed[len(prefix) :]
        elif fixed.startswith(HEAD_ROOTS):
            fixed = "^" + fixed
        out[fixed] = name
    return out


def full_name(rule_name: str, model_type: str) -> str:
    """A rule's name of their tensor as a Hugging Face model with heads stores it."""
    return rule_name[1:] if rule_name.startswith("^") else BASE_PREFIXES[model_type] + rule_name


# ---------------------------------------------------------------- tensor layouts


def _neox_head_order(cfg: ModelConfig) -> torch.Tensor:
    """Row order taking our fused qkv to GPT-NeoX's: theirs[r] = ours[order[r]].

    Ours is [q heads | k heads | v heads], each head's rotary pairs adjacent (2j, 2j+1).
    GPT-NeoX interleaves [q_h, k_h, v_h] per head and pairs dims (j, j + D/2) (rotate-half).
    Permuting q and k alike inside a head leaves every q·k, hence the model, unchanged.
    """
    H, D = cfg.n_head, cfg.head_dim
    half_order = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])  # rotate-half layout
    rows = []
    for h in range(H):
        for part in range(3):  # q, k, v
            base = part * H * D + h * D
            rows.append(base + (half_order if part < 2 else torch.arange(D)))
    return torch.cat(rows)


def _half_order(head_dim: int) -> torch.Tensor:
    """theirs[r] = ours[order[r]] inside one head: rotate-half pairs (j, j + D/2) are our
    adjacent pairs (2j, 2j + 1)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _heads_to_ours(theirs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of whole heads (n·D, ...) from rotate-half to adjacent-pair order."""
    rows = theirs.reshape(-1, head_dim, *theirs.shape[1:])  # (heads, D, ...)
    out = torch.empty_like(rows)
    out[:, _half_order(head_dim)] = rows
    return out.reshape(theirs.shape)


def _heads_to_theirs(ours: torch.Tensor, head_dim: int) -> torch.Tensor:
    rows = ours.reshape(-1, head_dim, *ours.shape[1:])
    return rows[:, _half_order(head_dim)].reshape(ours.shape)


def tensor_to_ours(rule: Rule, theirs: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    if rule.kind == "rope_qkv":  # q and k rotate: reorder their pairs; v stays
        q, k, v = theirs
        D = cfg.head_dim
        return torch.cat([_heads_to_ours(q, D), _heads_to_ours(k, D), v], dim=0)
    if rule.kind == "rope_vector":
        return _heads_to_ours(theirs[0], cfg.head_dim)
    if rule.kind == "transpose":
        return theirs[0].t().contiguous()
    if rule.kind == "concat":
        return torch.cat(theirs, dim=0)
    if rule.kind == "neox_qkv":
        order = _neox_head_order(cfg)
        out = torch.empty_like(theirs[0])
        out[order] = theirs[0]
        return out
    return theirs[0]


def tensor_to_theirs(rule: Rule, ours: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    if rule.kind == "rope_qkv":
        q, k, v = ours.split(_qkv_rows(cfg), dim=0)
        D = cfg.head_dim
        return [_heads_to_theirs(q, D), _heads_to_theirs(k, D), v.contiguous()]
    if rule.kind == "rope_vector":
        return [_heads_to_theirs(ours, cfg.head_dim)]
    if rule.kind == "transpose":
        return [ours.t().contiguous()]
    if rule.kind == "concat":
        return list(ours.chunk(len(rule.theirs), dim=0))
    if rule.kind == "neox_qkv":
        return [ours[_neox_head_order(cfg)].contiguous()]
    return [ours]


def _qkv_rows(cfg: ModelConfig) -> list[int]:
    return [cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]


def expected_theirs_shapes(
    rule: Rule, ours_shape: torch.Size, cfg: ModelConfig
) -> list[tuple[int, ...]]:
    """The shapes their tensors must have for our tensor of ours_shape."""
    if rule.kind == "rope_qkv":
        return [(rows, *ours_shape[1:]) for rows in _qkv_rows(cfg)]
    if rule.kind == "transpose":
        return [tuple(reversed(ours_shape))]
    if rule.kind == "concat":
        n = len(rule.theirs)
        return [(ours_shape[0] // n, *ours_shape[1:])] * n
    return [tuple(ours_shape)]
