"""The fine-tuning sections of a run's config: finetune.* (what a fine-tune reads and, for
classify and multitask, its epochs, head and recipe) and lora.* (low-rank adapters)."""

from dataclasses import dataclass

from lmforge.config.fields import param, require


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneConfig:
    """A fine-tune: its inputs, and for `finetune classify` its epochs and head."""

    base: str = param("", "the run directory whose model was fine-tuned")
    train_file: str = param("", "training examples (.csv, .tsv or .jsonl)")
    valid_file: str = param("", "validation examples, evaluated after every epoch")
    text_column: str = param("sentence", "column holding the text to classify")
    text_pair_column: str = param("", "column of the second text of pair tasks; empty for none")
    label_column: str = param("label", "column holding the label (a string or an integer)")
    epochs: float = param(3.0, "passes over the training examples (BERT: 2 to 4)")
    max_steps: int = param(
        0,
        "classify/multitask: at most this many optimizer steps, when finetune.epochs would take "
        "more (the lr schedule then ends there; 0: no cap)",
    )
    warmup_fraction: float = param(0.1, "share of the steps spent warming the lr up (BERT: 0.1)")
    class_weights: str = param(
        "none", "none, or balanced: weight each class's loss by n / (classes · count of class)"
    )
    dropout: float = param(0.1, "dropout before the classifier layer")
    length_grouping: int = param(
        50,
        "classify: sort the examples of every N shuffled training batches by length, so a "
        "batch holds similar lengths and pads little (faster steps); 0 = plain shuffle",
    )
    pretrain_steps: int = param(
        0,
        "classify: first continue the base's own objective (MLM for a BERT, CLM for a GPT) on "
        "the training texts for this many steps (domain-adaptive pretraining; 0: off)",
    )
    pretrain_lr: float = param(1e-4, "classify: peak learning rate of those pretrain_steps")
    from_scratch: str = param(
        "",
        "classify: the config whose new base was trained on the training texts first (set by "
        "--from-scratch CONFIG; pretrain_steps are then that base's steps)",
    )
    soup: int = param(
        1,
        "classify: fine-tune N classifiers from the base (one head initialisation, each its own "
        "batch order and dropout) and average their weights into the run's model (a model "
        "soup: about an ensemble's accuracy at one model's cost; N times the training); 1: off",
    )
    pooling: str = param(
        "auto",
        "classify/multitask: the sequence vector the classifier reads: cls (a BERT's pooled "
        "[CLS]), mean (of the real tokens' final states), last (the last real token's); auto: "
        "cls for a BERT, last for a GPT",
    )
    freeze_layers: int = param(0, "finetune lm/sft: keep the first N blocks frozen")
    freeze_embeddings: bool = param(False, "finetune lm/sft: keep the embeddings frozen")
    pack: bool = param(
        True, "finetune sft: pack short examples into full rows (attention stays inside each)"
    )
    skip_bad_lines: bool = param(False, "finetune sft: skip (and count) malformed JSONL lines")
    label_smoothing: float = param(
        0.0,
        "target (1 - e)·onehot + e/K instead of onehot in every fine-tune's loss; 0.1 is typical",
    )
    task_temperature: float = param(
        1.0, "finetune multitask: draw task i with p ∝ n_i^(1/T); 1 = by size, larger = more even"
    )

    def __post_init__(self) -> None:
        require(self.epochs > 0, "finetune.epochs must be > 0")
        require(self.soup >= 1, "finetune.soup must be >= 1 (1 = one classifier, no soup)")
        require(self.max_steps >= 0, "finetune.max_steps must be >= 0 (0 = no cap)")
        require(self.freeze_layers >= 0, "finetune.freeze_layers must be >= 0")
        require(self.task_temperature > 0, "finetune.task_temperature must be > 0")
        require(0 <= self.label_smoothing < 1, "finetune.label_smoothing must be in [0, 1)")
        require(0 <= self.warmup_fraction < 1, "finetune.warmup_fraction must be in [0, 1)")
        require(
            self.class_weights in ("none", "balanced"),
            f"finetune.class_weights: unknown value {self.class_weights!r}; use none or balanced",
        )
        require(0 <= self.dropout < 1, "finetune.dropout must be in [0, 1)")
        require(self.length_grouping >= 0, "finetune.length_grouping must be >= 0 (0 = off)")
        require(self.pretrain_steps >= 0, "finetune.pretrain_steps must be >= 0")
        require(self.pretrain_lr > 0, "finetune.pretrain_lr must be > 0")
        require(
            self.pooling in ("auto", "cls", "mean", "last"),
            f"finetune.pooling: unknown value {self.pooling!r}; use auto, cls, mean or last",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class LoRAConfig:
    """Low-rank adapters for fine-tuning (`--lora-r` and friends); r = 0 trains every weight."""

    r: int = param(0, "LoRA rank; 0 fine-tunes all weights instead (8 is typical)")
    alpha: float = param(16.0, "scale of the update: (alpha / r) · B A")
    dropout: float = param(0.0, "dropout on the adapters' input")
    targets: str = param(
        "q,k,v,o",
        "layers to adapt, comma-separated: q, k, v (our fused qkv), o, fc, down, mlp, or "
        "module-name patterns such as blocks.*.mlp.fc",
    )

    def __post_init__(self) -> None:
        require(self.r >= 0, "lora.r must be >= 0 (0 = no adapters)")
        require(self.alpha > 0, "lora.alpha must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout must be in [0, 1)")
        require(bool(self.target_list), "lora.targets must name at least one layer")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]
