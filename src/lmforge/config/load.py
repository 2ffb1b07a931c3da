"""Loading configs: YAML/JSON/TOML files and `--set` overrides, key by key, each checked.

To and from plain dicts every value is checked against its field's type; an unknown key gets a
"did you mean" hint. No torch import here.
"""

import dataclasses
import difflib
import json
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from lmforge.config.schema import RunConfig
from lmforge.errors import ConfigError

# ---------------------------------------------------------------- dict <-> dataclass


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check `value` against a field type, accepting ints for floats and numeric strings."""
    args = typing.get_args(kind)
    if args and type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return _pairs(value, where)
    if typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(
            f"{where}: expected a mapping such as {{rope_type: llama3}}, got {value!r}"
        )
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif (kind is int and isinstance(value, int) and not isinstance(value, bool)) or (
        kind in (bool, str) and isinstance(value, kind)
    ):
        return value
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def _pairs(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """A schedule: a list of [step, value] integer pairs, e.g. [[0, 64], [500, 256]]."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(value, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 and all(map(is_int, pair))
        for pair in value
    ):
        return tuple((int(step), int(v)) for step, v in value)
    raise ConfigError(
        f"{where}: expected a list of [step, value] pairs such as [[0, 64]], got {value!r}"
    )


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(_unknown_key_message(where, [f"{prefix}{n}" for n in names]))
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_dict(hints[key], value, prefix=f"{where}.")
        else:
            kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key as (dotted name, default, help), for `config show` and error hints."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.default, f.metadata.get("help", "")))
    return rows


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key {key}{hint}"


# ---------------------------------------------------------------- files and overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML config file (chosen by extension) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, e.g. 'model:'")
    return data


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; each value is parsed as YAML (int/float/bool/list)."""
    known = [key for key, _, _ in all_keys()]
    # an empty YAML section (`model:` with every key commented out) parses to None
    out = {k: {} if v is None else dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        if key not in known:
            raise ConfigError(_unknown_key_message(key, known))
        section, name = key.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(
                f"--set {key}: the config's {section!r} is {target!r}, not a section of keys; "
                f"write it as a mapping ({section}: then indented keys)"
            )
        target[name] = value
    return out


def load_config(path: str | Path | None, sets: list[str] | None = None) -> RunConfig:
    """Read a config file (or the defaults when `path` is None) and apply `--set` overrides."""
    data = read_config_file(path) if path else {}
    return from_dict(RunConfig, apply_overrides(data, sets or []))


# ---------------------------------------------------------------- one resolve per verb
#
# pretrain: load_config(file, sets). Every fine-tune: the base run's model, the task's training
# defaults, then the config file, --set overrides and the command-line flags, in that order.
# Resuming: the run's own config.json plus --set (resume_config). Distillation: the student's
# config with the teacher's vocabulary (student_config).

FINETUNE_TASKS = ("classify", "multitask", "lm", "sft")
# Classifiers, from the BERT paper (Devlin et al. 2019, appendix A.3): AdamW with β2 = 0.999,
# weight decay 0.01, linear decay to 0 after a 10% warmup, lr in 2e-5 … 5e-5.
_CLASSIFY_TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "objective": "classify",
        "lr": 5e-5,
        "min_lr": 0.0,
        "schedule": "linear",
        "batch_size": 32,
        "weight_decay": 0.01,
        "beta2": 0.999,
        "eps": 1e-6,
        "best_metric": "val_accuracy",
    }
)
# derived by a classifier fine-tune from finetune.epochs, finetune.warmup_fraction, data size
_DERIVED_TRAIN_KEYS = (
    "objective",
    "max_steps",
    "warmup_steps",
    "eval_interval",
    "checkpoint_interval",
    "eval_batches",
)
# Continued pretraining and SFT start from trained weights: a tenth of pretraining's lr, short.
LM_TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "lr": 1e-4,
        "min_lr": 1e-5,
        "warmup_steps": 20,
        "max_steps": 500,
        "eval_interval": 100,
        "checkpoint_interval": 100,
        "eval_batches": 10,
    }
)


def finetune_config(
    base: RunConfig,
    base_dir: str | Path,
    task: str,
    path: str | Path | None,
    sets: list[str],
    flags: Mapping[str, Any],
) -> RunConfig:
    """The resolved config of fine-tune `task` of the run in base_dir (whose config is base);
    flags are finetune.* values given as command-line flags."""
    if task not in FINETUNE_TASKS:
        raise ConfigError(f"unknown fine-tune {task!r}; use one of {FINETUNE_TASKS}")
    user = apply_overrides(read_config_file(path) if path else {}, sets)
    model = {**to_dict(base.model), **model_overrides(user)}
    finetune = {**(user.get("finetune") or {}), **flags, "base": str(base_dir)}
    lora = user.get("lora") or {}
    dist = user.get("dist") or {}  # torchrun: dist.strategy=ddp (or fsdp)
    if task in ("lm", "sft"):
        if base.model.arch != "gpt" or base.train.objective != "clm":
            raise ConfigError(f"{base_dir} is not a GPT language model; finetune {task} needs one")
        train = {**to_dict(base.train), **LM_TRAIN_DEFAULTS, **(user.get("train") or {})}
        data = {"model": model, "train": {**train, "objective": "clm"}, "finetune": finetune}
        extra = {"data": user.get("data") or {}, "lora": lora, "dist": dist}
        return from_dict(RunConfig, {**data, **extra})
    if base.train.objective == "classify":
        raise ConfigError(
            f"{base_dir} is already a classifier; fine-tune a pretrained run (lmforge pretrain "
            "or lmforge import hf)"
        )
    train = user.get("train") or {}
    fixed = [key for key in _DERIVED_TRAIN_KEYS if key in train]
    if fixed:
        raise ConfigError(
            f"train.{fixed[0]} is set by the fine-tune itself (objective classify, lengths from "
            "finetune.epochs, finetune.warmup_fraction and the data size); drop it"
        )
    if user.get("data"):
        raise ConfigError("data.* is not used when fine-tuning; give --train and --valid files")
    train = {**_CLASSIFY_TRAIN_DEFAULTS, **train}
    data = {"model": model, "train": train, "finetune": finetune, "lora": lora, "dist": dist}
    return from_dict(RunConfig, data)


def model_overrides(user: dict[str, Any]) -> dict[str, Any]:
    """The model.* keys a fine-tune's config may set (only model.dropout: the rest is the
    base run's), popped from user."""
    model = user.pop("model", {}) or {}
    if set(model) - {"dropout"}:
        raise ConfigError(
            f"model.{sorted(set(model) - {'dropout'})[0]} comes from the base run and cannot "
            "change when fine-tuning (only model.dropout can)"
        )
    return model


def resume_config(saved: RunConfig, sets: list[str]) -> RunConfig:
    """A run's own config with --set overrides for continuing it; the model cannot change."""
    if any(s.strip().startswith("model.") for s in sets):
        raise ConfigError("model.* cannot change when resuming; start a new run instead")
    return from_dict(RunConfig, apply_overrides(to_dict(saved), sets))


def student_config(
    student_config_file: Path, sets: list[str], data_dir: Path, teacher_vocab: int
) -> RunConfig:
    """A distillation student's config: its own file and --set, the teacher's vocabulary."""
    cfg = load_config(student_config_file, [*sets, f"data.dir={data_dir}"])
    if cfg.model.arch != "gpt" or cfg.train.objective != "clm":
        raise ConfigError("distillation trains a causal GPT student (model.arch=gpt, clm)")
    if cfg.model.vocab_size not in (0, teacher_vocab):
        raise ConfigError(
            f"student model.vocab_size={cfg.model.vocab_size} but the teacher's tokenizer has "
            f"{teacher_vocab} tokens; teacher and student share one tokenizer (drop the key)"
        )
    return replace(cfg, model=replace(cfg.model, vocab_size=teacher_vocab))
