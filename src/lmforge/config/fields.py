"""The building blocks of every config dataclass: a field with its help text, and the check
that raises ConfigError when a value is out of range."""

from dataclasses import field
from typing import Any

from lmforge.errors import ConfigError


def param(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text shown by `--help` and `config show`."""
    return field(default=default, metadata={"help": help})


def require(ok: bool, message: str) -> None:
    """A config check: ConfigError(message) unless ok (message says what to set instead)."""
    if not ok:
        raise ConfigError(message)
