"""Configs to and from dicts, files (YAML/JSON/TOML) and `--set` overrides, checked key by key.

Imported through lmforge.config, which re-exports every public name here.
"""

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml

from lmforge.config import RunConfig
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
    text = path.read_text(encoding="utf-8")
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
        out.setdefault(section, {})[name] = value
    return out


def load_config(path: str | Path | None, sets: list[str] | None = None) -> RunConfig:
    """Read a config file (or the defaults when `path` is None) and apply `--set` overrides."""
    data = read_config_file(path) if path else {}
    return from_dict(RunConfig, apply_overrides(data, sets or []))
