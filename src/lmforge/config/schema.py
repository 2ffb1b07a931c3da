"""A run's configuration (RunConfig: model, train, data and dist here; finetune and lora in
config/finetune.py), and the metric names each training objective reports.

Configs are frozen, keyword-only dataclasses validated at construction (ranges and relations
between keys). No torch import here.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lmforge.config.fields import param, require
from lmforge.config.finetune import FinetuneConfig, LoRAConfig

log = logging.getLogger(__name__)

# Validation metrics each objective reports (the eval records in metrics.jsonl).
# val_mlm_hidden_accuracy: on the masked tokens the input does not show ([MASK] or random), so
# copying the 10% left visible earns nothing.
_MLM = ("val_loss", "val_mlm_loss", "val_mlm_accuracy", "val_mlm_hidden_accuracy")
_CLASSIFY = ("val_loss", "val_accuracy", "val_macro_f1", "val_macro_precision", "val_macro_recall")
OBJECTIVES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "clm": ("val_loss", "val_ppl"),
        "mlm": _MLM,
        "mlm+nsp": (*_MLM, "val_nsp_loss", "val_nsp_accuracy"),
        "classify": _CLASSIFY,
    }
)


def higher_is_better(metric: str) -> bool:
    """Accuracies, F1, precision and recall improve upwards; losses and perplexity downwards."""
    return metric.endswith(("accuracy", "f1", "precision", "recall"))


ACTIVATIONS = ("gelu_tanh", "gelu", "swiglu", "relu2")
POSITION_ENCODINGS = ("learned", "rope", "sincos")
ROPE_SCALING_KEYS = {  # rope_type -> the keys it needs
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _check_rope_scaling(scaling: dict[str, Any] | None, pos_emb: str) -> None:
    """model.rope_scaling: None, or a known rope_type with every number it needs."""
    if scaling is None:
        return
    require(pos_emb == "rope", "model.rope_scaling needs model.pos_emb=rope")
    kind = scaling.get("rope_type", scaling.get("type"))
    require(
        kind in ROPE_SCALING_KEYS,
        f"model.rope_scaling: unsupported rope_type {kind!r}; use {list(ROPE_SCALING_KEYS)}",
    )
    for key in ROPE_SCALING_KEYS[kind]:
        value = scaling.get(key)
        require(
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
            f"model.rope_scaling.{key} must be a positive number (rope_type {kind})",
        )
    require(
        scaling["high_freq_factor"] > scaling["low_freq_factor"],
        "model.rope_scaling: high_freq_factor must exceed low_freq_factor",
    )


def _check_schedule(name: str, schedule: tuple[tuple[int, int], ...]) -> None:
    """[[step, value], ...]: steps >= 0 and strictly increasing, values positive."""
    steps = [step for step, _ in schedule]
    require(
        all(step >= 0 for step in steps) and steps == sorted(set(steps)),
        f"{name}: the steps must be >= 0 and increasing, e.g. [[0, 64], [500, 256]]",
    )
    require(all(value > 0 for _, value in schedule), f"{name}: every value must be positive")


def scheduled(schedule: tuple[tuple[int, int], ...], step: int, default: int) -> int:
    """The value of the last [from_step, value] pair with from_step <= step; default before."""
    value = default
    for from_step, scheduled_value in schedule:
        if from_step > step:
            break
        value = scheduled_value
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """Shape and flavour of the Transformer."""

    arch: str = param("gpt", "model family: gpt (decoder-only causal LM) or bert (encoder)")
    vocab_size: int = param(0, "vocabulary size; 0 takes it from the data's tokenizer")
    block_size: int = param(256, "context length in tokens")
    n_layer: int = param(6, "number of Transformer blocks")
    n_head: int = param(6, "attention heads per block")
    n_kv_head: int = param(0, "key/value heads for grouped-query attention; 0 means n_head")
    n_embd: int = param(384, "width of the residual stream; must be divisible by n_head")
    dropout: float = param(0.0, "dropout probability on attention, residual and embeddings")
    bias: bool = param(True, "use biases in Linear and LayerNorm layers")
    pos_emb: str = param(
        "learned",
        "position encoding: learned (GPT-2), rope (rotary) or sincos (the original "
        "Transformer's fixed sinusoids)",
    )
    rope_theta: float = param(10000.0, "RoPE base frequency")
    tie_weights: bool = param(True, "share the token embedding with the output head")
    activation: str = param(
        "gelu_tanh",
        "MLP activation: gelu_tanh (GPT-2), gelu (exact erf), swiglu (Llama: silu(gate)·up) or "
        "relu2 (ReLU squared)",
    )
    norm: str = param("layernorm", "normalisation: layernorm (GPT-2, BERT) or rmsnorm (Llama)")
    ln_eps: float = param(1e-5, "LayerNorm / RMSNorm epsilon")
    qkv_bias: bool = param(False, "biases on q, k, v even when model.bias is off (Qwen2)")
    qk_norm: bool = param(False, "RMSNorm on every query and key head before RoPE (Qwen3)")
    zero_init_proj: bool = param(
        False, "start every block's output projections at zero: each block begins as identity"
    )
    rope_scaling: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "RoPE frequency scaling as in transformers, e.g. {rope_type: llama3, "
            "factor: 32, low_freq_factor: 1, high_freq_factor: 4, "
            "original_max_position_embeddings: 8192}"
        },
    )
    init_std: float = param(0.02, "standard deviation of the normal weight initialisation")
    type_vocab_size: int = param(2, "segment (token type) ids of a BERT; 0 for none")
    head_size: int = param(
        0, "width of one attention head; 0 means n_embd / n_head (pruned heads keep their width)"
    )
    mlp_hidden: int = param(0, "hidden width of the MLP; 0 means 4 * n_embd")
    ngram_buckets: int = param(
        0, "a bert's hashed n-gram embeddings: buckets per order 2..ngram_n (fastText); 0 = off"
    )
    ngram_n: int = param(3, "longest n-gram that model.ngram_buckets embeds (2 to 5)")
    ngram_min_count: int = param(
        0,
        "0: hash the n-grams into model.ngram_buckets per order; N > 0: give each n-gram seen "
        "at least N times in the pretraining text a row of its own (the most frequent "
        "model.ngram_buckets of all orders), every other n-gram one shared row",
    )

    def __post_init__(self) -> None:
        require(
            self.arch in ("gpt", "bert"),
            f"model.arch: unknown architecture {self.arch!r}; use 'gpt' or 'bert'",
        )
        require(
            self.arch != "bert" or self.pos_emb == "learned",
            "model.pos_emb: a bert uses learned positions; set model.pos_emb=learned",
        )
        require(self.type_vocab_size >= 0, "model.type_vocab_size must be >= 0")
        require(self.vocab_size >= 0, "model.vocab_size must be >= 0 (0 = take it from the data)")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            require(getattr(self, name) > 0, f"model.{name} must be a positive integer")
        require(self.head_size >= 0, "model.head_size must be >= 0 (0 = n_embd / n_head)")
        require(self.mlp_hidden >= 0, "model.mlp_hidden must be >= 0 (0 = 4 * n_embd)")
        require(
            self.head_size > 0 or self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
            f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}",
        )
        require(self.n_kv_head >= 0, "model.n_kv_head must be >= 0 (0 = n_head)")
        require(
            self.n_head % self.kv_heads == 0,
            f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.kv_heads})",
        )
        require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        require(
            self.pos_emb in POSITION_ENCODINGS,
            f"model.pos_emb must be one of {', '.join(POSITION_ENCODINGS)}",
        )
        require(
            self.pos_emb != "sincos" or self.n_embd % 2 == 0,
            f"model.pos_emb=sincos needs an even model.n_embd (sin/cos pairs), got {self.n_embd}",
        )
        require(
            self.pos_emb != "rope" or self.head_dim % 2 == 0,
            f"model.pos_emb=rope needs an even head size, got n_embd/n_head = {self.head_dim}",
        )
        require(
            self.activation in ACTIVATIONS,
            f"model.activation must be one of {', '.join(ACTIVATIONS)}",
        )
        require(self.norm in ("layernorm", "rmsnorm"), "model.norm must be layernorm or rmsnorm")
        require(
            self.arch != "bert"
            or (
                self.norm == "layernorm"
                and self.activation in ("gelu", "gelu_tanh")
                and not self.qk_norm
            ),
            "a bert uses layernorm, a GELU MLP and no qk_norm",
        )
        _check_rope_scaling(self.rope_scaling, self.pos_emb)
        require(self.ngram_buckets >= 0, "model.ngram_buckets must be >= 0 (0 = off)")
        require(2 <= self.ngram_n <= 5, "model.ngram_n must be between 2 and 5")
        require(self.ngram_min_count >= 0, "model.ngram_min_count must be >= 0 (0 = hashing)")
        require(
            not self.ngram_min_count
            or (self.ngram_n + 1) * (self.vocab_size + 1) ** self.ngram_n < 2**63,
            f"model.ngram_n={self.ngram_n} is too long for a vocabulary of {self.vocab_size} "
            "with model.ngram_min_count (its n-gram codes overflow 64 bits); lower ngram_n",
        )
        require(
            self.ngram_buckets == 0 or self.arch == "bert",
            "model.ngram_buckets needs model.arch=bert (a GPT's cached decoding sees one token)",
        )
        require(self.ln_eps > 0 and self.init_std > 0, "model.ln_eps and init_std must be > 0")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:
        """Width of the concatenated attention heads (n_embd unless heads were pruned)."""
        return self.n_head * self.head_dim

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """Optimisation, schedule, evaluation and checkpointing of one training run."""

    max_steps: int = param(2000, "optimizer steps to train for")
    batch_size: int = param(12, "sequences per micro-batch")
    grad_accum: int = param(1, "micro-batches accumulated per optimizer step")
    lr: float = param(1e-3, "peak learning rate, reached after warmup")
    min_lr: float = param(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = param(100, "steps of linear warmup from 0 to lr")
    weight_decay: float = param(0.1, "AdamW decoupled weight decay on 2-D weights")
    beta1: float = param(0.9, "AdamW beta1")
    beta2: float = param(0.99, "AdamW beta2")
    eps: float = param(1e-8, "AdamW epsilon")
    grad_clip: float = param(1.0, "clip the global gradient norm to this; 0 disables")
    eval_interval: int = param(250, "evaluate every this many steps (and at the start and end)")
    eval_batches: int = param(50, "validation batches per evaluation")
    checkpoint_interval: int = param(
        500, "write a checkpoint every this many steps (and at the end)"
    )
    keep_last: int = param(2, "checkpoints kept besides the best one")
    log_interval: int = param(10, "steps between metrics.jsonl records")
    max_bad_steps: int = param(5, "consecutive non-finite (or spike) steps that stop the run")
    spike_guard: float = param(
        0.0,
        "skip an update whose loss exceeds this many times the mean of the last "
        "train.spike_window accepted losses (0: off; 3 is a reasonable start)",
    )
    spike_window: int = param(100, "accepted losses the spike guard averages over")
    seed: int = param(1337, "seed of every random choice (init, batches, dropout)")
    device: str = param("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = param(
        "auto",
        "auto times bf16 autocast against fp32 at start-up and keeps the faster (recorded in "
        "config.json, reused on resume); or float32, bfloat16 or float16 (with a loss scaler)",
    )
    compile: bool = param(False, "torch.compile each block (the first steps compile)")
    optimizer: str = param(
        "adamw",
        "adamw, or muon: Muon (momentum orthogonalised by Newton-Schulz) for the 2-D weights "
        "inside the blocks, AdamW for embeddings, head, norms and biases",
    )
    muon_lr: float = param(0.02, "optimizer muon: peak learning rate of the Muon matrices")
    muon_momentum: float = param(0.95, "optimizer muon: Nesterov momentum of the Muon matrices")
    muon_dtype: str = param(
        "auto",
        "optimizer muon: precision of the Newton-Schulz products, float32 or bfloat16; auto "
        "times both at start-up and keeps the faster (recorded in config.json)",
    )
    seq_len_schedule: tuple[tuple[int, int], ...] = param(
        (),
        "pretraining: [[step, length], ...] trains on windows of `length` tokens from `step` "
        "on (sequence-length warmup: short windows first); model.block_size before the first",
    )
    batch_size_schedule: tuple[tuple[int, int], ...] = param(
        (),
        "pretraining: [[step, size], ...] draws `size` sequences per micro-batch from `step` "
        "on; train.batch_size before the first",
    )
    logger: str = param(
        "none",
        "where runs are watched besides metrics.jsonl and loss.png: none, tensorboard "
        "(lmforge[tensorboard]) or wandb (offline unless WANDB_MODE says otherwise)",
    )
    progress: bool = param(True, "show a progress bar")
    objective: str = param(
        "clm",
        "clm (causal LM, a gpt), mlm or mlm+nsp (BERT pretraining, a bert), or classify "
        "(set by `lmforge finetune classify`)",
    )
    schedule: str = param(
        "cosine",
        "learning-rate decay after warmup, to min_lr at max_steps: cosine, linear, or wsd "
        "(warmup-stable-decay: lr held, then a linear decay over the last decay_fraction)",
    )
    decay_fraction: float = param(
        0.2, "schedule wsd: the share of the steps after warmup spent decaying to min_lr"
    )
    best_metric: str = param(
        "val_loss",
        "validation metric that picks the best checkpoint and drives early stopping, e.g. "
        "val_loss, val_mlm_accuracy, val_accuracy, val_macro_f1",
    )
    patience: int = param(
        0, "stop after this many evaluations without a better best_metric; 0 never stops early"
    )

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "log_interval"):
            require(getattr(self, name) > 0, f"train.{name} must be a positive integer")
        for name in ("warmup_steps", "eval_batches", "checkpoint_interval", "max_bad_steps"):
            require(getattr(self, name) >= 0, f"train.{name} must be >= 0")
        require(self.keep_last >= 1, "train.keep_last must be >= 1")
        require(
            self.spike_guard == 0 or self.spike_guard > 1,
            f"train.spike_guard must be 0 (off) or > 1 (a multiple of the mean loss); "
            f"got {self.spike_guard}",
        )
        require(self.spike_window >= 1, "train.spike_window must be >= 1")
        require(self.lr > 0, "train.lr must be > 0")
        require(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr={self.lr}]")
        if self.warmup_steps > self.max_steps:  # a short trial run of a long recipe
            log.warning(
                "train.warmup_steps (%d) is longer than the run: clamped to train.max_steps (%d)",
                self.warmup_steps,
                self.max_steps,
            )
            object.__setattr__(self, "warmup_steps", self.max_steps)  # frozen: set once, here
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay, grad_clip >= 0")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2 must be in [0,1)")
        require(self.eps > 0, "train.eps must be > 0")
        require(
            self.dtype in ("float32", "bfloat16", "float16", "auto"),
            "train.dtype must be float32, bfloat16, float16 or auto",
        )
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"train.device: unknown device {self.device!r}; use auto, cpu or cuda",
        )
        require(
            self.objective in OBJECTIVES,
            f"train.objective: unknown objective {self.objective!r}; use {', '.join(OBJECTIVES)}",
        )
        require(
            self.schedule in ("cosine", "linear", "wsd"),
            "train.schedule must be cosine, linear or wsd",
        )
        require(0.0 < self.decay_fraction <= 1.0, "train.decay_fraction must be in (0, 1]")
        require(self.patience >= 0, "train.patience must be >= 0 (0 never stops early)")
        require(self.optimizer in ("adamw", "muon"), "train.optimizer must be adamw or muon")
        require(self.muon_lr > 0, "train.muon_lr must be > 0")
        require(
            self.muon_dtype in ("auto", "float32", "bfloat16"),
            "train.muon_dtype must be auto, float32 or bfloat16",
        )
        require(0 <= self.muon_momentum < 1, "train.muon_momentum must be in [0, 1)")
        _check_schedule("train.seq_len_schedule", self.seq_len_schedule)
        _check_schedule("train.batch_size_schedule", self.batch_size_schedule)
        require(
            self.logger in ("none", "tensorboard", "wandb"),
            f"train.logger: unknown logger {self.logger!r}; use none, tensorboard or wandb",
        )
        known = OBJECTIVES[self.objective]
        require(
            self.best_metric in known,
            f"train.best_metric: {self.best_metric!r} is not reported for objective "
            f"{self.objective}; use one of {', '.join(known)}",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DataConfig:
    """Where the token shards written by `lmforge prepare` live."""

    dir: str = param("", "data directory made by `lmforge prepare` (meta.json + *.bin)")
    whole_word_masking: bool = param(
        False,
        "MLM: mask every WordPiece of a chosen word (whole-word masking) instead of pieces; "
        "data prepared with --segmenter jieba masks jieba's Chinese words whole",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DistConfig:
    """How training spreads over processes started by torchrun (see docs/distributed.md)."""

    strategy: str = param("none", "none, ddp (replicated model) or fsdp (sharded, FSDP2)")
    activation_checkpointing: bool = param(
        False, "recompute each block's activations in the backward pass instead of keeping them"
    )

    def __post_init__(self) -> None:
        require(
            self.strategy in ("none", "ddp", "fsdp"),
            f"dist.strategy: unknown strategy {self.strategy!r}; use none, ddp or fsdp",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """Everything a training run needs; written resolved to the run's config.json."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        # clm on a bert stays readable (imported BERTs carry the default train section);
        # `lmforge pretrain` refuses to train it
        require(
            not self.train.objective.startswith("mlm") or self.model.arch == "bert",
            f"train.objective={self.train.objective} pretrains a BERT encoder; set "
            "model.arch=bert (see configs/bert-mini.yaml) or train.objective=clm",
        )
        require(
            self.train.optimizer != "muon" or self.dist.strategy != "fsdp",
            "train.optimizer=muon orthogonalises whole matrices, which FSDP shards; use "
            "dist.strategy=ddp or train.optimizer=adamw",
        )
        longest = max((length for _, length in self.train.seq_len_schedule), default=0)
        require(
            longest <= self.model.block_size,
            f"train.seq_len_schedule: a length of {longest} exceeds model.block_size "
            f"({self.model.block_size}); the model has positions for block_size tokens",
        )
