"""Adapter runs: a small LoRA file beside a reference to the base run it was trained on.

An adapter run directory holds `adapter.safetensors` (the LoRA A/B matrices and any task head:
every tensor that trained) and `adapter_config.json` (rank, alpha, dropout, the adapted layers,
the base run's path and the SHA-256 of its weights). Loading rebuilds the base, wraps the same
layers and loads the adapter; a base whose weights changed since is refused.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.model.lora import adapter_state_dict, add_lora
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.layout import ADAPTER_CONFIG, ADAPTER_FILE, MODEL_FILE


def is_adapter_run(run_dir: Path) -> bool:
    return (Path(run_dir) / ADAPTER_CONFIG).is_file()


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_record(base_run: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """adapter_config.json's content; settings: r, alpha, dropout, layers, heads."""
    return {
        "format": "lmforge-lora",
        **settings,
        "base_run": str(Path(base_run).resolve()),
        "base_sha256": weights_sha256(Path(base_run) / MODEL_FILE),
    }


def write_adapter_config(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / ADAPTER_CONFIG, json.dumps(record, indent=2))


def save_adapter(
    run_dir: Path, model: nn.Module, base_run: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """Write the adapter of a LoRA-wrapped model and its adapter_config.json."""
    record = adapter_record(base_run, settings)
    tensors = {name: t.contiguous() for name, t in adapter_state_dict(model).items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{ADAPTER_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(run_dir / ADAPTER_FILE)
    write_adapter_config(run_dir, record)
    return record


def read_adapter_config(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((Path(run_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{run_dir}/{ADAPTER_CONFIG} is unreadable ({exc})") from None
    missing = [k for k in ("r", "alpha", "layers", "base_run", "base_sha256") if k not in record]
    if missing:
        raise CheckpointError(f"{run_dir}/{ADAPTER_CONFIG} lacks {missing}")
    return record


def check_base(run_dir: Path, record: dict[str, Any]) -> Path:
    """The base run an adapter belongs to, refusing one whose weights are not the same."""
    base = Path(record["base_run"])
    weights = base / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{run_dir} is a LoRA adapter of {base}, which is missing; restore that run or "
            "merge the adapter where both exist (`lmforge lora merge`)"
        )
    if weights_sha256(weights) != record["base_sha256"]:
        raise CheckpointError(
            f"{run_dir} was trained on other weights than {base} holds now (SHA-256 differs); "
            "the adapter only fits the exact base it was trained on"
        )
    return base


def attach_adapter(model: nn.Module, run_dir: Path, record: dict[str, Any]) -> nn.Module:
    """Wrap the recorded layers of a base model and load the adapter's tensors into them."""
    add_lora(
        model,
        list(record["layers"]),
        int(record["r"]),
        float(record["alpha"]),
        float(record.get("dropout", 0.0)),
        tuple(record.get("heads", ())),
    )
    try:
        tensors = load_file(str(Path(run_dir) / ADAPTER_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{run_dir}/{ADAPTER_FILE} is missing or corrupt ({exc})") from None
    expected = adapter_state_dict(model)
    if set(tensors) != set(expected):
        raise CheckpointError(
            f"{run_dir}/{ADAPTER_FILE} does not fit its base: missing "
            f"{sorted(set(expected) - set(tensors))[:4]}, unexpected "
            f"{sorted(set(tensors) - set(expected))[:4]}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{run_dir}/{ADAPTER_FILE}: {name} has shape {tuple(tensor.shape)}, the base "
                f"needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model.eval()
