"""Fine-tuning a GPT run as a language model: continued pretraining on new text (`finetune lm`)
and prompt -> completion tuning (`finetune sft`), in full or with LoRA adapters.

Both start from the base run's weights and tokenizer, train through the shared trainer, and
write an ordinary run directory; with lora.r > 0 it is an adapter run (adapter.safetensors +
adapter_config.json) that load_run, generate and evaluate use over the base.
"""

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.adapters import adapter_record, is_adapter_run, write_adapter_config
from lmforge.config import (
    RunConfig,
    SamplingConfig,
    apply_overrides,
    from_dict,
    read_config_file,
    to_dict,
)
from lmforge.data.batches import IGNORE_INDEX, Batch, step_generator
from lmforge.data.classify import LABELS_FILE
from lmforge.data.sft import (
    CHAT_TEMPLATE,
    ROLES,
    Encoded,
    Pair,
    encode_pairs,
    pack,
    packed_batch,
    padded_batch,
    read_pairs,
)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.files import check_output_dir, staged_directory, write_text_atomic
from lmforge.finetune import model_overrides
from lmforge.generate import generate
from lmforge.model.lora import add_lora, lora_layers, merge_lora, trainable_share
from lmforge.predict import load_classifier
from lmforge.tokenizer import Tokenizer
from lmforge.training import TrainingPlan, open_data, train

log = logging.getLogger(__name__)
CHAT_TEMPLATE_FILE = "chat_template.json"  # how `messages` were rendered (data/sft.py)
# Continued pretraining and SFT start from trained weights: a tenth of pretraining's lr, short.
LM_TRAIN_DEFAULTS: Mapping[str, Any] = {
    "lr": 1e-4,
    "min_lr": 1e-5,
    "warmup_steps": 20,
    "max_steps": 500,
    "eval_interval": 100,
    "checkpoint_interval": 100,
    "eval_batches": 10,
}


# ---------------------------------------------------------------- config


def lm_config(
    base: Path, path: Path | None, sets: list[str], finetune: Mapping[str, Any]
) -> RunConfig:
    """The base run's model, fine-tuning defaults, then the config file, --set and flags."""
    base_cfg = ckpt.read_run_config(base)
    if base_cfg.model.arch != "gpt" or base_cfg.train.objective != "clm":
        raise CheckpointError(f"{base} is not a GPT language model; finetune lm/sft need one")
    user = apply_overrides(read_config_file(path) if path else {}, sets)
    model = model_overrides(user)
    train = {**to_dict(base_cfg.train), **LM_TRAIN_DEFAULTS, **(user.get("train") or {})}
    data = {
        "model": {**to_dict(base_cfg.model), **model},
        "train": {**train, "objective": "clm"},
        "data": user.get("data") or {},
        "lora": user.get("lora") or {},
        "finetune": {**(user.get("finetune") or {}), **finetune, "base": str(base)},
    }
    return from_dict(RunConfig, data)


# ---------------------------------------------------------------- the starting model


def base_initialiser(cfg: RunConfig) -> Callable[[nn.Module], None]:
    """Load the base weights, freeze what finetune.* says, wrap LoRA adapters if lora.r > 0."""

    def init(model: nn.Module) -> None:
        ckpt.load_base_weights(model, Path(cfg.finetune.base))
        freeze(model, cfg.finetune.freeze_layers, cfg.finetune.freeze_embeddings)
        if cfg.lora.r:
            add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
        trainable, total = trainable_share(model)
        log.info(
            "trainable parameters: %s of %s (%.2f%%)",
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )

    return init


def freeze(model: nn.Module, layers: int, embeddings: bool) -> None:
    """No gradients for the embeddings and/or the first `layers` blocks."""
    if layers > len(model.blocks):
        raise ConfigError(f"--freeze-layers {layers} but the model has {len(model.blocks)} blocks")
    for block in list(model.blocks)[:layers]:
        block.requires_grad_(False)
    if embeddings:
        model.tok_emb.requires_grad_(False)
        if model.pos_emb is not None:
            model.pos_emb.requires_grad_(False)


def _adapter_settings(cfg: RunConfig, model: nn.Module) -> dict[str, Any]:
    return {
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "dropout": cfg.lora.dropout,
        "layers": sorted(lora_layers(model)),
        "heads": [],
    }


def _write_adapter_config(cfg: RunConfig, out: Path) -> None:
    """adapter_config.json of an adapter run, from a model wrapped the same way."""
    if is_adapter_run(Path(cfg.finetune.base)):
        raise CheckpointError(
            f"{cfg.finetune.base} is itself a LoRA adapter run: new adapters need a full base; "
            f"merge it first (`lmforge lora merge {cfg.finetune.base} --out DIR`) or fine-tune "
            "without --lora-r"
        )
    model = ckpt.build_model(cfg)
    add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    out.mkdir(parents=True, exist_ok=True)
    record = adapter_record(Path(cfg.finetune.base), _adapter_settings(cfg, model))
    write_adapter_config(out, record)


def _run(cfg: RunConfig, out: Path, overwrite: bool, plan: TrainingPlan) -> dict[str, Any]:
    check_output_dir(out, overwrite)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if cfg.lora.r:
        _write_adapter_config(cfg, out)  # load_run treats the run as base + adapters
    summary = train(cfg, out, None, plan=plan)
    return {**summary, "lora_r": cfg.lora.r}


# ---------------------------------------------------------------- finetune lm


def finetune_lm(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Continued pretraining of the base run on cfg.data.dir (prepared with its tokenizer)."""
    if not cfg.data.dir:
        raise ConfigError(
            "finetune lm needs --data DIR (made by `lmforge prepare` with the base "
            "run's tokenizer: --tokenizer-file BASE/tokenizer.json)"
        )
    base_tok = Tokenizer.load(Path(cfg.finetune.base) / ckpt.TOKENIZER_FILE)
    _, data_tok = open_data(cfg)
    if data_tok.sha256() != base_tok.sha256():
        raise DataError(
            f"{cfg.data.dir} was prepared with another tokenizer than {cfg.finetune.base}; "
            f"prepare it with --tokenizer-file {Path(cfg.finetune.base) / ckpt.TOKENIZER_FILE}"
        )
    return _run(cfg, out, overwrite, TrainingPlan(init=base_initialiser(cfg)))


# ---------------------------------------------------------------- finetune sft


def sft_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on completion tokens only (targets -100 elsewhere), packed or padded."""
    if batch.segments is not None:
        logits = model(batch.inputs, segments=batch.segments)
    else:
        logits = model(batch.inputs, attention_mask=batch.attention_mask)
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.targets.flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def sft_sources(
    cfg: RunConfig, train: list[Encoded], valid: list[Encoded], pad_id: int
) -> tuple[Callable[[int, int], Batch], Callable[[], list[Batch]]]:
    """Step-seeded training batches (packed rows, or padded examples) and fixed val batches."""
    size, seed, block = cfg.train.batch_size, cfg.train.seed, cfg.model.block_size
    if cfg.finetune.pack:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        rows = pack([train[i] for i in order], block)
        log.info("packed %d examples into %d rows of %d tokens", len(train), len(rows), block)
    units = rows if cfg.finetune.pack else train

    def train_batch(step: int, micro: int) -> Batch:
        pick = torch.randint(0, len(units), (size,), generator=step_generator(seed, 0, step, micro))
        chosen = [units[i] for i in pick.tolist()]
        if cfg.finetune.pack:
            return packed_batch(chosen, block, pad_id)
        return padded_batch(chosen, pad_id)

    val = [padded_batch(valid[i : i + size], pad_id) for i in range(0, len(valid), size)]
    return train_batch, lambda: val[: cfg.train.eval_batches] or val


def finetune_sft(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Teach the base run prompt -> completion pairs from JSONL; then score it by generation."""
    ft = cfg.finetune
    if not ft.train_file or not ft.valid_file:
        raise ConfigError("finetune sft needs --train FILE and --valid FILE (JSONL)")
    tokenizer = Tokenizer.load(Path(ft.base) / ckpt.TOKENIZER_FILE)
    block = cfg.model.block_size
    train = encode_pairs(read_pairs(Path(ft.train_file), ft.skip_bad_lines), tokenizer, block)
    valid_pairs = read_pairs(Path(ft.valid_file), ft.skip_bad_lines)
    valid = encode_pairs(valid_pairs, tokenizer, block)
    plan = TrainingPlan(
        objective=(partial(sft_loss, label_smoothing=ft.label_smoothing), None),
        sources=sft_sources(cfg, train, valid, tokenizer.eot_id),
        tokenizer=tokenizer,
        init=base_initialiser(cfg),
    )
    summary = _run(cfg, out, overwrite, plan)
    template = {"turn": CHAT_TEMPLATE, "prompt_ends_with": "<|assistant|>\n", "roles": ROLES}
    write_text_atomic(out / CHAT_TEMPLATE_FILE, json.dumps(template, indent=2))
    return {**summary, "generation": score_generation(out, valid_pairs)}


# ---------------------------------------------------------------- evaluation by generation


def score_generation(
    run_dir: Path, pairs: list[Pair], max_new_tokens: int | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Greedy completions of every prompt against the references: exact match, BLEU, chrF."""
    _, model, tokenizer = ckpt.load_run(run_dir)
    longest = max(len(tokenizer.encode(p.completion)) for p in pairs)
    limit = max_new_tokens or min(2 * longest + 8, model.cfg.block_size - 1)
    sampling = SamplingConfig(max_new_tokens=limit, temperature=0)
    prompts = [p.prompt for p in pairs]
    outputs = list(generate(model, tokenizer, prompts, sampling, batch_size=batch_size))
    references = [p.completion.strip() for p in pairs]
    hypotheses = [o.strip() for o in outputs]
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(pairs)
    return {
        "examples": len(pairs),
        "exact_match": exact,
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "samples": [
            {"prompt": p, "output": o} for p, o in zip(prompts[:3], hypotheses[:3], strict=True)
        ],
    }


def evaluate_sft(run_dir: Path, file: Path, skip_bad_lines: bool = False) -> dict[str, Any]:
    """`lmforge evaluate RUN --sft FILE`: generation scores on a JSONL of pairs."""
    return score_generation(run_dir, read_pairs(file, skip_bad_lines))


# ---------------------------------------------------------------- lora merge


def merge_run(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A full run with the adapters of run_dir folded into the base weights: no base needed."""
    cfg = ckpt.read_run_config(run_dir)
    if not cfg.lora.r:
        raise ConfigError(f"{run_dir} has no LoRA adapters (lora.r=0): nothing to merge")
    tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER_FILE)
    if cfg.train.objective == "classify":
        _, model, _, _ = load_classifier(run_dir)
        extra = [LABELS_FILE]
    else:
        _, model, _ = ckpt.load_run(run_dir)
        extra = []
    before = trainable_share(model)[1]
    merge_lora(model)
    merged = replace(cfg, lora=replace(cfg.lora, r=0))
    with staged_directory(out, overwrite) as tmp:
        ckpt.write_run_files(tmp, merged, tokenizer)
        ckpt.save_weights(model, tmp / ckpt.MODEL_FILE)
        for name in extra:
            shutil.copyfile(run_dir / name, tmp / name)
    return {"out": str(out), "params": trainable_share(model)[1], "params_with_adapters": before}
