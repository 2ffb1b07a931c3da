"""Run directories: config.json, model.safetensors, tokenizer.json, trainer_state/, checkpoints/.

Every file is written atomically (temporary name, then rename) and read without unpickling
arbitrary objects: weights are safetensors, state is JSON or `torch.load(weights_only=True)`.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import RunConfig, to_dict
from lmforge.errors import CheckpointError
from lmforge.model.lora import adapter_state_dict, lora_layers
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.layout import (
    ADAPTER_FILE,
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    STATE_DIR,
    STATE_FILE,
    STATE_JSON,
    TOKENIZER_FILE,
    checkpoint_name,
)
from lmforge.tokenizer import Tokenizer

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights without torch.compile/DDP prefixes, each shared (tied) tensor stored once."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        name = _strip_wrapper_prefixes(name)
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def _strip_wrapper_prefixes(name: str) -> str:
    """`_orig_mod.blocks.0...` (compile) or `module.blocks.0...` (DDP) -> `blocks.0...`."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / DDP wrappers."""
    while isinstance(
        inner := getattr(model, "_orig_mod", getattr(model, "module", None)), nn.Module
    ):
        model = inner
    return model


def weights_name(model: nn.Module) -> str:
    """adapter.safetensors for a model with LoRA adapters (only they train), else
    model.safetensors."""
    return ADAPTER_FILE if lora_layers(unwrap(model)) else MODEL_FILE


def weights_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: every weight, or only the trainable ones of an adapter run."""
    if lora_layers(unwrap(model)):
        return {
            _strip_wrapper_prefixes(k): v.to("cpu").contiguous()
            for k, v in adapter_state_dict(model).items()
        }
    return clean_state_dict(model)


def save_weights(
    model: nn.Module, path: Path, step: int = 0, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """The weights (see weights_to_save, or `tensors` gathered by the caller, e.g. from FSDP
    shards) as safetensors, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = weights_to_save(model) if tensors is None else tensors
    save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step)})
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights, naming any tensor that is missing or has the wrong shape."""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}; the run has no saved checkpoint")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({exc}); use another checkpoint"
        ) from None
    expected = weights_to_save(model)
    for name, tensor in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path} lacks tensor {name}; was it saved by another model?")
        if tensors[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, the config "
                f"expects {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path} holds tensors this model does not have: {unexpected[:5]}")
    unwrap(model).load_state_dict(tensors, strict=False)  # tied weights appear once in the file


def _link_or_copy(source: Path, target: Path) -> None:
    """Make target a hard link to source (a copy where links fail), replacing it atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def write_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer) -> None:
    """The files that describe a run: resolved config.json and tokenizer.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(to_dict(cfg), indent=2))
    tokenizer.save(run_dir / TOKENIZER_FILE)


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoints/step_N is assembled (by every rank, for sharded state) before renaming."""
    return run_dir / CHECKPOINTS_DIR / f"{checkpoint_name(step)}.tmp"


def fresh_staging_dir(run_dir: Path, step: int) -> Path:
    tmp = staging_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / STATE_DIR).mkdir(parents=True)
    return tmp


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    trainer_state: dict[str, Any],
    is_best: bool,
    keep_last: int,
    tensors: dict[str, torch.Tensor] | None = None,
    staged: bool = False,
) -> Path:
    """Write checkpoints/step_N atomically, mirror it at the top level, keep the last K and best.
    staged: the staging directory already holds files (sharded optimizer state) to keep."""
    step = trainer_state["state"]["step"]
    final = run_dir / CHECKPOINTS_DIR / checkpoint_name(step)
    tmp = staging_dir(run_dir, step) if staged else fresh_staging_dir(run_dir, step)
    weights = weights_name(model)
    save_weights(model, tmp / weights, step, tensors)
    torch.save(trainer_state, tmp / STATE_DIR / STATE_FILE)
    write_text_atomic(tmp / STATE_DIR / STATE_JSON, json.dumps(trainer_state["state"], indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (run_dir / STATE_DIR).mkdir(exist_ok=True)
    for name in (STATE_FILE, STATE_JSON):
        _link_or_copy(final / STATE_DIR / name, run_dir / STATE_DIR / name)
    _link_or_copy(final / weights, run_dir / weights)
    if is_best:
        (run_dir / BEST_DIR).mkdir(exist_ok=True)
        _link_or_copy(final / weights, run_dir / BEST_DIR / weights)
        _link_or_copy(final / STATE_DIR / STATE_JSON, run_dir / BEST_DIR / STATE_JSON)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (a .tmp one was cut short and is ignored)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer/progress/RNG state of a checkpoint directory (tensors and plain data only)."""
    path = checkpoint / STATE_DIR / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"missing trainer state {path}; cannot resume from it") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from None
