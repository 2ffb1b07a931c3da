"""Kernel choices measured on this machine, kept in the user's cache directory.

A calibration (which dtype decodes faster, say) depends on the CPU model and the torch build, not
on the run: it is stored once per (CPU model, torch version, shape) in
$XDG_CACHE_HOME/lmforge/kernels.json (default ~/.cache/lmforge/kernels.json), written atomically.
A missing, unreadable or unwritable cache only means measuring again.
"""

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.rundir.files import write_text_atomic

CACHE_FILE = "kernels.json"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmforge"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass
class KernelCache:
    path: Path
    entries: dict[str, Any] = field(default_factory=dict)

    def save(self, key: str, value: Any) -> None:
        """Record one verdict; a cache that cannot be written is skipped, silently."""
        self.entries[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True))
        except OSError:
            pass


def kernel_cache(path: Path | None = None) -> KernelCache:
    """The cache at path (default: the user's cache directory), empty if absent or damaged."""
    path = path or cache_dir() / CACHE_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    return KernelCache(path, entries if isinstance(entries, dict) else {})
