"""Hugging Face <-> lmforge: config translation and parameter-name mapping, as data.

Three Hugging Face architectures are covered, each the exact twin of one lmforge model:
GPT-2 (our GPT with learned positions), GPT-NeoX with sequential residuals and full rotary
(our GPT with RoPE) and BERT. A `Rule` maps one of our tensors to one or more of theirs; the
layout changes (Conv1D transposes, fused or split qkv, rotary pair order) live in `convert_*`.
"""

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
HF_SPECIAL_TOKENS = "special_tokens_map.json"
HF_VOCAB_JSON = "vocab.json"
HF_VOCAB_TXT = "vocab.txt"
HF_MERGES = "merges.txt"
PEFT_DIR = "adapter"  # inside an export of an adapter run: the PEFT adapter
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

SUPPORTED = ("gpt2", "gpt_neox", "bert")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "bert": "BertForPreTraining",
}
BASE_PREFIXES = {"gpt2": "transformer.", "gpt_neox": "gpt_neox.", "bert": "bert."}
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
    hidden = hf["hidden_size"]
    _require_equal("intermediate_size", hf.get("intermediate_size", 4 * hidden), 4 * hidden)
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
    """Which Hugging Face architecture holds our model exactly."""
    if cfg.kv_heads != cfg.n_head:
        raise CheckpointError(
            f"cannot export grouped-query attention (n_kv_head={cfg.kv_heads}, "
            f"n_head={cfg.n_head}): GPT-2, GPT-NeoX and BERT need n_kv_head == n_head"
        )
    if cfg.attn_width != cfg.n_embd or cfg.mlp_width != 4 * cfg.n_embd:
        raise CheckpointError(
            f"cannot export a structurally pruned model (attention width {cfg.attn_width}, MLP "
            f"width {cfg.mlp_width}, n_embd {cfg.n_embd}): GPT-2, GPT-NeoX and BERT need "
            "n_head * head size == n_embd and an MLP of 4 * n_embd"
        )
    if cfg.arch == "bert":
        return "bert"
    return "gpt2" if cfg.pos_emb == "learned" else "gpt_neox"


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
        "intermediate_size": 4 * cfg.n_embd,
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
    return {"gpt2": _gpt2_rules, "gpt_neox": _neox_rules, "bert": _bert_rules}[model_type](cfg)


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


def normalise_names(tensors: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Their state dict in rule names: base prefix stripped, heads marked `^`, old names fixed.

    Works whether the file holds a base model (GPT2Model, BertModel) or one with heads.
    """
    prefix, out = BASE_PREFIXES[model_type], {}
    for name, tensor in tensors.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        fixed = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        fixed = fixed.replace("LayerNorm.beta", "LayerNorm.bias")
        if fixed.startswith(prefix):
            fixed = fixed[len(prefix) :]
        elif fixed.startswith(HEAD_ROOTS):
            fixed = "^" + fixed
        out[fixed] = tensor
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


def tensor_to_ours(rule: Rule, theirs: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
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
    if rule.kind == "transpose":
        return [ours.t().contiguous()]
    if rule.kind == "concat":
        return list(ours.chunk(len(rule.theirs), dim=0))
    if rule.kind == "neox_qkv":
        return [ours[_neox_head_order(cfg)].contiguous()]
    return [ours]


def expected_theirs_shapes(rule: Rule, ours_shape: torch.Size) -> list[tuple[int, ...]]:
    """The shapes their tensors must have for our tensor of ours_shape."""
    if rule.kind == "transpose":
        return [tuple(reversed(ours_shape))]
    if rule.kind == "concat":
        n = len(rule.theirs)
        return [(ours_shape[0] // n, *ours_shape[1:])] * n
    return [tuple(ours_shape)]
