"""Loading what a run directory holds: its config, its model (full, LoRA adapters over a base,
int8, or a fine-tuned classifier) and its tokenizer."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.compress.quantize import load_quantized
from lmforge.config import RunConfig, from_dict
from lmforge.data.chat import ChatTemplate, legacy_template
from lmforge.data.classify import TASK_COLUMNS, load_label_map
from lmforge.errors import CheckpointError, ConfigError, LMForgeError
from lmforge.model import BERT, GPT
from lmforge.model.heads import MultiTaskClassifier, SequenceClassifier, TaskHead
from lmforge.model.lora import add_lora, merge_lora
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.adapters import (
    attach_adapter,
    check_base,
    is_adapter_run,
    read_adapter_config,
)
from lmforge.rundir.checkpoint import clean_state_dict, load_weights
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.layout import (
    BEST_DIR,
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    QUANTIZATION_FILE,
    TASKS_FILE,
    TOKENIZER_FILE,
)
from lmforge.tokenizer import Tokenizer


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run was trained with."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    try:
        return from_dict(RunConfig, json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path} is not a valid lmforge config: {exc}") from None


def build_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes, randomly initialised."""
    return BERT(cfg.model) if cfg.model.arch == "bert" else GPT(cfg.model)


def check_vocab(tokenizer: Tokenizer, cfg: RunConfig, where: str) -> None:
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{cfg.model.vocab_size} (model.vocab_size); use the tokenizer the model was "
            "trained with"
        )


def load_run(run_dir: str | Path, which: str = "latest") -> tuple[RunConfig, nn.Module, Tokenizer]:
    """(config, model in eval mode, tokenizer) of a run; `which` is latest or best."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if cfg.train.objective == "classify":
        raise CheckpointError(
            f"{run_dir} is a fine-tuned classifier, not a language model; use "
            f"`lmforge predict {run_dir} --input FILE --output FILE`"
        )
    try:
        tokenizer = Tokenizer.load(run_dir / TOKENIZER_FILE)
    except LMForgeError as exc:
        raise CheckpointError(str(exc)) from None
    check_vocab(tokenizer, cfg, str(run_dir))
    if is_adapter_run(run_dir):  # LoRA adapters over a base run
        record = read_adapter_config(run_dir)
        _, model, _ = load_run(check_base(run_dir, record))
        where = run_dir if which == "latest" else run_dir / BEST_DIR
        return cfg, attach_adapter(model, where, record), tokenizer
    model = build_model(cfg)
    if (run_dir / QUANTIZATION_FILE).is_file():  # an int8 run made by `compress quantize`
        return cfg, load_quantized(run_dir, model), tokenizer
    weights = run_dir / (MODEL_FILE if which == "latest" else f"{BEST_DIR}/{MODEL_FILE}")
    load_weights(model, weights)
    return cfg, model.eval(), tokenizer


def load_base_weights(model: nn.Module, base_dir: Path) -> None:
    """A fine-tune's starting weights from run base_dir; an adapter run counts as its base with
    the adapters merged in."""
    base_dir = Path(base_dir)
    if not is_adapter_run(base_dir):
        load_weights(model, base_dir / MODEL_FILE)
        return
    _, adapted, _ = load_run(base_dir)
    merge_lora(adapted)
    model.load_state_dict(clean_state_dict(adapted), strict=False)


def with_adapters(cfg: RunConfig, model: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    """With lora.r > 0: LoRA on the body's target layers; they and the `keep` layers train."""
    if cfg.lora.r:
        lora = cfg.lora
        add_lora(model, lora.target_list, lora.r, lora.alpha, lora.dropout, keep)
    return model


def classifier_model(cfg: RunConfig, n_classes: int, base_weights: bool) -> SequenceClassifier:
    """A classifier over cfg's body (with the base run's weights if base_weights, else random:
    a checkpoint fills it) and LoRA adapters as lora.* says."""
    body = build_model(cfg)
    if base_weights:
        load_base_weights(body, Path(cfg.finetune.base))
    model = SequenceClassifier(body, n_classes, cfg.finetune.dropout, cfg.finetune.pooling)
    return with_adapters(cfg, model, ("classifier",))


def multitask_model(
    cfg: RunConfig, classes: dict[str, int], base_weights: bool
) -> MultiTaskClassifier:
    """One body, one head per task (name -> number of classes), adapters as lora.* says."""
    body = build_model(cfg)
    if base_weights:
        load_base_weights(body, Path(cfg.finetune.base))
    model = MultiTaskClassifier(body, classes, cfg.finetune.dropout, cfg.finetune.pooling)
    return with_adapters(cfg, model, ("heads*",))


def read_tasks(run_dir: Path) -> dict[str, Any]:
    """tasks.json of a multitask run: each task's labels, files and columns."""
    try:
        return json.loads((run_dir / TASKS_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{run_dir}/{TASKS_FILE} is unreadable ({exc})") from None


def load_classifier(
    run_dir: Path, task: str | None = None
) -> tuple[RunConfig, nn.Module, Tokenizer, list[str]]:
    """(config, classifier in eval mode, tokenizer, label names) of a fine-tuned run; for a
    `finetune multitask` run, of its head `task` (the config then names that task's columns)."""
    if (run_dir / TASKS_FILE).is_file():
        return _load_task_head(run_dir, task)
    if task is not None:
        raise LMForgeError(
            f"--task is for runs made by `lmforge finetune multitask`; {run_dir} has one head"
        )
    cfg = read_run_config(run_dir)
    if cfg.train.objective != "classify":
        raise CheckpointError(
            f"{run_dir} is not a classifier (train.objective={cfg.train.objective}); predict "
            "with a run made by `lmforge finetune classify`"
        )
    tokenizer = Tokenizer.load(run_dir / layout.TOKENIZER_FILE)
    check_vocab(tokenizer, cfg, str(run_dir))
    labels = load_label_map(run_dir / LABELS_FILE)
    # an adapter run holds adapters and the head; the body comes from the base run
    model = classifier_model(cfg, len(labels), base_weights=bool(cfg.lora.r))
    ckpt.load_weights(model, run_dir / layout.MODEL_FILE)
    return cfg, model.eval(), tokenizer, labels


def _load_task_head(
    run_dir: Path, task: str | None
) -> tuple[RunConfig, nn.Module, Tokenizer, list[str]]:
    """One head of a multitask run, with that task's labels and default columns."""
    cfg = read_run_config(run_dir)
    tasks = read_tasks(run_dir)
    if task not in tasks:
        problem = "is a multitask run: choose a head with --task NAME"
        if task is not None:
            problem = f"has no task {task!r}"
        raise LMForgeError(f"{run_dir} {problem}; its tasks are {', '.join(sorted(tasks))}")
    tokenizer = Tokenizer.load(run_dir / layout.TOKENIZER_FILE)
    check_vocab(tokenizer, cfg, str(run_dir))
    classes = {name: len(record["labels"]) for name, record in tasks.items()}
    model = multitask_model(cfg, classes, base_weights=bool(cfg.lora.r))
    ckpt.load_weights(model, run_dir / layout.MODEL_FILE)
    columns = {k: tasks[task][k] for k in TASK_COLUMNS if k in tasks[task]}
    cfg = replace(cfg, finetune=replace(cfg.finetune, **columns))
    return cfg, TaskHead(model, task).eval(), tokenizer, list(tasks[task]["labels"])


def read_chat_template(run_dir: Path, tokenizer: Tokenizer) -> ChatTemplate | None:
    """The run's chat template (chat_template.jinja; an older run's chat_template.json turned
    into the Jinja template that renders the same text), or None for a plain language model."""
    run_dir = Path(run_dir)
    if (run_dir / layout.CHAT_TEMPLATE).is_file():
        source = (run_dir / layout.CHAT_TEMPLATE).read_text(encoding="utf-8")
    elif (run_dir / layout.CHAT_TEMPLATE_FILE).is_file():
        source = legacy_template(_read_json(run_dir / layout.CHAT_TEMPLATE_FILE))
    else:
        return None
    tokens = {"bos_token": "", "eos_token": tokenizer.end_token or ""}
    if (run_dir / layout.SPECIAL_TOKENS_FILE).is_file():
        tokens |= _read_json(run_dir / layout.SPECIAL_TOKENS_FILE)
    return ChatTemplate(source, tokens["bos_token"] or "", tokens["eos_token"] or "")


def write_chat_template(run_dir: Path, template: ChatTemplate) -> None:
    """chat_template.jinja and the special tokens it names, atomically."""
    write_text_atomic(run_dir / layout.CHAT_TEMPLATE, template.source)
    tokens = {"bos_token": template.bos_token, "eos_token": template.eos_token}
    write_text_atomic(run_dir / layout.SPECIAL_TOKENS_FILE, json.dumps(tokens, indent=2))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
