"""`lmforge finetune classify | multitask | lm | sft`: a run's model trained further, through
the one session (so every fine-tune checkpoints, resumes and runs under torchrun).

- classify, multitask: classifier layers over the base (lmforge.jobs.classify).
- lm: continued pretraining of a GPT on text prepared with its tokenizer.
- sft: a GPT learns prompt -> completion pairs (loss on the completion only), then is scored by
  generation (exact match, BLEU, chrF).

With lora.r > 0 only low-rank adapters (and new heads) train; an lm/sft run is then an adapter
run (adapter.safetensors + adapter_config.json) that load_run uses over its base.
"""

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig
from lmforge.config.load import resume_config
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.data.classify import TASK_COLUMNS
from lmforge.data.sft import encode_pairs, read_pairs
from lmforge.data.sources import open_data, sft_sources
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.jobs.classify import (
    finetune_classify,
    finetune_classify_from_scratch,
    finetune_multitask,
    run_classify,
    run_multitask,
)
from lmforge.jobs.evaluate import score_generation
from lmforge.jobs.finetune_start import base_model, resolve, start_run
from lmforge.jobs.from_scratch import stopped_while_preparing
from lmforge.jobs.run_control import main_rank_lock
from lmforge.jobs.session import TrainingPlan, train
from lmforge.model.lora import add_lora, lora_layers
from lmforge.rundir import layout
from lmforge.rundir.adapters import adapter_record, is_adapter_run, write_adapter_config
from lmforge.rundir.load import (
    build_model,
    read_chat_template,
    read_run_config,
    read_tasks,
    write_chat_template,
)
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import sft_loss

__all__ = [
    "finetune_classify",
    "finetune_classify_from_scratch",
    "finetune_lm",
    "finetune_multitask",
    "finetune_sft",
    "resolve",
    "resume_finetune",
]


# ---------------------------------------------------------------- lm and sft


def _write_adapter_config(cfg: RunConfig, out: Path) -> None:
    """adapter_config.json of an adapter run, from a model wrapped the same way."""
    model = build_model(cfg)
    add_lora(model, cfg.lora.target_list, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    settings = {
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "dropout": cfg.lora.dropout,
        "layers": sorted(lora_layers(model)),
        "heads": [],
    }
    write_adapter_config(out, adapter_record(Path(cfg.finetune.base), settings))


def _check_lora_base(cfg: RunConfig) -> None:
    if cfg.lora.r and is_adapter_run(Path(cfg.finetune.base)):
        raise CheckpointError(
            f"{cfg.finetune.base} is itself a LoRA adapter run: new adapters need a full base; "
            f"merge it first (`lmforge lora merge {cfg.finetune.base} --out DIR`) or fine-tune "
            "without --lora-r"
        )


def _lm_run(
    cfg: RunConfig, out: Path, overwrite: bool, resume: bool, plan: TrainingPlan
) -> dict[str, Any]:
    _check_lora_base(cfg)
    resume_from = start_run(out, overwrite, resume)
    extra = plan.run_files

    def run_files(run_dir: Path) -> None:
        if cfg.lora.r:  # load_run then treats the run as base + adapters
            _write_adapter_config(cfg, run_dir)
        if extra is not None:
            extra(run_dir)

    summary = train(cfg, out, resume_from, replace(plan, run_files=run_files))
    return {**summary, "lora_r": cfg.lora.r}


def finetune_lm(
    cfg: RunConfig, out: Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Continued pretraining of the base run on cfg.data.dir (prepared with its tokenizer)."""
    with main_rank_lock(out, "lmforge finetune lm"):
        return _lm(cfg, out, overwrite, resume)


def _lm(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> dict[str, Any]:
    if not cfg.data.dir:
        raise ConfigError(
            "finetune lm needs --data DIR (made by `lmforge prepare` with the base "
            "run's tokenizer: --tokenizer-file BASE/tokenizer.json)"
        )
    base_tokenizer = Tokenizer.load(Path(cfg.finetune.base) / layout.TOKENIZER_FILE)
    _, data_tokenizer = open_data(cfg)
    if data_tokenizer.sha256() != base_tokenizer.sha256():
        raise DataError(
            f"{cfg.data.dir} was prepared with another tokenizer than {cfg.finetune.base}; "
            f"prepare it with --tokenizer-file {Path(cfg.finetune.base) / layout.TOKENIZER_FILE}"
        )
    return _lm_run(cfg, out, overwrite, resume, TrainingPlan(build=base_model(cfg)))


def finetune_sft(
    cfg: RunConfig, out: Path, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Teach the base run prompt -> completion pairs from JSONL; then score it by generation."""
    with main_rank_lock(out, "lmforge finetune sft"):
        return _sft(cfg, out, overwrite, resume)


def _sft(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> dict[str, Any]:
    ft = cfg.finetune
    if not ft.train_file or not ft.valid_file:
        raise ConfigError("finetune sft needs --train FILE and --valid FILE (JSONL)")
    tokenizer = Tokenizer.load(Path(ft.base) / layout.TOKENIZER_FILE)
    template = chat_template_of(Path(ft.base), tokenizer)
    block = cfg.model.block_size
    train_pairs = read_pairs(Path(ft.train_file), ft.skip_bad_lines, template)
    train_set = encode_pairs(train_pairs, tokenizer, block)
    valid_pairs = read_pairs(Path(ft.valid_file), ft.skip_bad_lines, template)
    valid = encode_pairs(valid_pairs, tokenizer, block)
    plan = TrainingPlan(
        objective=(partial(sft_loss, label_smoothing=ft.label_smoothing), None),
        sources=lambda world: sft_sources(world, train_set, valid, tokenizer.eot_id),
        tokenizer=tokenizer,
        build=base_model(cfg),
        run_files=lambda run_dir: write_chat_template(run_dir, template),
    )
    summary = _lm_run(cfg, out, overwrite, resume, plan)
    if not summary["is_main"]:
        return summary
    return {**summary, "generation": score_generation(out, valid_pairs)}


def chat_template_of(run_dir: Path, tokenizer: Tokenizer) -> ChatTemplate:
    """A run's chat template; lmforge's own (data/chat.py) for a run that has none."""
    template = read_chat_template(run_dir, tokenizer)
    return template or ChatTemplate(DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or "")


# ---------------------------------------------------------------- --resume


def finetune_kind(run_dir: Path, cfg: RunConfig) -> str:
    """Which fine-tune made a run: classify, multitask, lm or sft."""
    if not cfg.finetune.base:
        raise CheckpointError(
            f"{run_dir} is not a fine-tuned run; continue it with `lmforge pretrain --resume`"
        )
    if cfg.train.objective == "classify":
        return "multitask" if (run_dir / layout.TASKS_FILE).is_file() else "classify"
    return "sft" if cfg.finetune.train_file else "lm"


def resume_finetune(run_dir: Path, sets: list[str], task: str | None = None) -> dict[str, Any]:
    """Continue a fine-tune from its newest checkpoint with its own config (plus --set); one
    stopped before its first checkpoint starts over."""
    with main_rank_lock(run_dir, "lmforge finetune --resume"):
        return _resume(run_dir, sets, task)


def _resume(run_dir: Path, sets: list[str], task: str | None) -> dict[str, Any]:
    if stopped_while_preparing(run_dir):
        raise CheckpointError(
            f"{run_dir} was stopped while its --from-scratch texts were prepared, before the run "
            "began: run the same `finetune classify --from-scratch` command again (it starts over)"
        )
    cfg = resume_config(read_run_config(run_dir), sets)
    kind = finetune_kind(run_dir, cfg)
    if task is not None and task != kind:
        raise ConfigError(f"{run_dir} was made by `finetune {kind}`; resume it with that verb")
    if kind == "multitask":
        tasks = read_tasks(run_dir)
        specs = {
            name: {k: record[k] for k in (*TASK_COLUMNS, "train_file", "valid_file")}
            for name, record in tasks.items()
        }
        return run_multitask(cfg, specs, run_dir, False, True)
    run = {"classify": run_classify, "lm": _lm, "sft": _sft}[kind]
    return run(cfg, run_dir, False, True)
