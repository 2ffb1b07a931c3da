"""Hugging Face <-> lmforge tensors: parameter-name mapping and layouts, as data, and the file
names of their directories (the configs are translated in hf_config.py).

Each covered Hugging Face architecture is the exact twin of one lmforge model: GPT-2 (our GPT
with learned positions), GPT-NeoX with sequential residuals and full rotary (our GPT with RoPE),
BERT, and the Llama family — Llama, Mistral (without a sliding window), Qwen2 (q/k/v biases) and
Qwen3 (q/k norm) — our GPT with RMSNorm, SwiGLU, RoPE and grouped-query attention. A `Rule` maps
one of our tensors to one or more of theirs; the layout changes (Conv1D transposes, fused or
split q/k/v and gate/up, the rotary pair order) live in tensor_to_ours / tensor_to_theirs.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lmforge.config import ModelConfig
from lmforge.interop.hf_config import LLAMA_FAMILY

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


@dataclass(frozen=True, slots=True)
class Rule:
    """Our tensor `ours` is made from their tensors `theirs` by `kind`."""

    ours: str
    theirs: tuple[str, ...]
    kind: str = "copy"  # copy | transpose (GPT-2 Conv1D) | concat (BERT q, k, v) | neox_qkv
    # | rope_qkv (Llama q, k, v: concatenated, q and k rows to adjacent rotary pairs)
    # | rope_vector (Qwen3 q/k norm weights: the same pair order)


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
