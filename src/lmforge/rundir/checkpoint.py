"""Run directories: config.json, model.safetensors, tokenizer.json, trainer_state/, checkpoints/.

Every file is written atomically (temporary name, then rename) and read without unpickling
arbitrary objects: weights and trainer state are safetensors and JSON; only the state.pt of a
run saved by an older lmforge is read, through `torch.load(weights_only=True)`.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import RunConfig, to_dict
from lmforge.errors import CheckpointError
from lmforge.model.lora import adapter_state_dict, lora_layers
from lmforge.rundir.files import atomic_path, real_directory, write_text_atomic, writing
from lmforge.rundir.layout import (
    ADAPTER_FILE,
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LEGACY_STATE_FILE,
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
    shards) as safetensors, atomically; a full disk is a DiskError and leaves path as it was."""
    tensors = weights_to_save(model) if tensors is None else tensors
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step)})


def _check_shapes(path: Path, expected: dict[str, torch.Tensor]) -> None:
    """Compare the file's header with the model before reading any tensor, so a file that
    claims other (or enormous) tensors is refused before memory is allocated for them."""
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    for name, tensor in expected.items():
        if name not in shapes:
            raise CheckpointError(f"{path} lacks tensor {name}; was it saved by another model?")
        if shapes[name] != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {shapes[name]}, the config "
                f"expects {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path} holds tensors this model does not have: {unexpected[:5]}")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights, naming any tensor that is missing or has the wrong shape."""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}; the run has no saved checkpoint")
    try:
        _check_shapes(path, weights_to_save(model))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({exc}); use another checkpoint"
        ) from None
    unwrap(model).load_state_dict(tensors, strict=False)  # tied weights appear once in the file


def _stage_link(source: Path, target: Path) -> Path:
    """A temporary `.NAME.tmp` beside target holding source's content: a hard link (a copy
    where links fail), to be renamed over target once every part of a checkpoint is on disk."""
    tmp = target.with_name(f".{target.name}.tmp")
    with writing(target):
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            try:
                shutil.copy2(source, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    return tmp


def _stage_mirror(
    run_dir: Path, staged: Path, weights: str, is_best: bool
) -> list[tuple[Path, Path]]:
    """(temporary, target) for the top-level mirror (and best/), all staged before any is
    renamed; on failure the temporaries made so far are removed."""
    targets = [
        (staged / weights, run_dir / weights),
        (staged / STATE_DIR / STATE_FILE, run_dir / STATE_DIR / STATE_FILE),
        (staged / STATE_DIR / STATE_JSON, run_dir / STATE_DIR / STATE_JSON),
    ]
    if is_best:
        targets.append((staged / weights, run_dir / BEST_DIR / weights))
        targets.append((staged / STATE_DIR / STATE_JSON, run_dir / BEST_DIR / STATE_JSON))
    made: list[tuple[Path, Path]] = []
    try:
        real_directory(run_dir / STATE_DIR)  # the run directory itself may be a link: the
        if is_best:  # user named it; links inside it are refused
            real_directory(run_dir / BEST_DIR)
        for source, target in targets:
            made.append((_stage_link(source, target), target))
    except BaseException:
        for tmp, _ in made:
            tmp.unlink(missing_ok=True)
        raise
    return made


def write_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer) -> None:
    """The files that describe a run: tokenizer.json, then the resolved config.json. config.json
    marks a run directory (what --resume reads), so it comes last: a run killed between the two
    has no config.json and is not taken for a run (found by the kill harness)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run_dir / TOKENIZER_FILE)
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(to_dict(cfg), indent=2))


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoints/step_N is assembled (by every rank, for sharded state) before renaming."""
    return run_dir / CHECKPOINTS_DIR / f"{checkpoint_name(step)}.tmp"


def fresh_staging_dir(run_dir: Path, step: int) -> Path:
    """An empty checkpoints/step_N.tmp/trainer_state (checkpoints/ may not be a symbolic link)."""
    real_directory(run_dir / CHECKPOINTS_DIR)
    tmp = staging_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(tmp):
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
    staged: the staging directory already holds files (sharded optimizer state) to keep.

    Everything that needs disk space happens first: the files in checkpoints/step_N.tmp, then
    hard links (or copies) of them under temporary names beside the top-level mirror. Only then
    is step_N.tmp renamed and each temporary renamed over its target; renames need no space.
    A failure before that point (a full disk: DiskError) removes the staging directory and the
    temporaries, so the previous checkpoint and the mirror stay exactly as they were."""
    step = trainer_state["state"]["step"]
    final = run_dir / CHECKPOINTS_DIR / checkpoint_name(step)
    tmp = staging_dir(run_dir, step) if staged else fresh_staging_dir(run_dir, step)
    weights = weights_name(model)
    try:
        save_weights(model, tmp / weights, step, tensors)
        save_trainer_state(trainer_state, tmp / STATE_DIR)
        mirror = _stage_mirror(run_dir, tmp, weights, is_best)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with writing(final):
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again
        tmp.rename(final)
        for staged_link, target in mirror:
            os.replace(staged_link, target)
        (run_dir / STATE_DIR / LEGACY_STATE_FILE).unlink(missing_ok=True)  # an older run's
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (a .tmp one was cut short and is ignored)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


_STATE_FORMAT = "lmforge-trainer-state/1"
_TENSOR, _TUPLE, _PAIRS = "__tensor__", "__tuple__", "__pairs__"


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of value with each tensor moved into `tensors` (named by where it sits,
    e.g. "rng.cpu") and replaced by {"__tensor__": name}; tuples become {"__tuple__": [...]},
    dicts with keys other than strings (optimizer state: parameter ids) {"__pairs__": [[k, v]]}."""
    if isinstance(value, torch.Tensor):
        name = where or "value"
        while name in tensors:
            name += "'"
        tensors[name] = value.detach().to("cpu").clone().contiguous()
        return {_TENSOR: name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{where}.{k}".lstrip("."), tensors) for k, v in value.items()}
        pairs = [
            [_encode(k, where, tensors), _encode(v, f"{where}.{k}", tensors)]
            for k, v in value.items()
        ]
        return {_PAIRS: pairs}
    if isinstance(value, tuple | list):
        items = [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(
        f"trainer state holds a {type(value).__name__} at {where!r}; only tensors, numbers, "
        "strings, lists and dicts can be saved"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of _encode."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        return tensors[value[_TENSOR]]
    if set(value) == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if set(value) == {_PAIRS}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_PAIRS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_trainer_state(trainer_state: dict[str, Any], directory: Path) -> None:
    """trainer_state/state.safetensors (every tensor; the rest as JSON in the header's metadata,
    so one file holds one consistent state) and state.json (the progress, for people to read).
    No pickle: loading it runs no code."""
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(trainer_state, "", tensors))
    with atomic_path(directory / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _STATE_FORMAT, "state": tree})
    write_text_atomic(directory / STATE_JSON, json.dumps(trainer_state["state"], indent=2))


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer/progress/RNG state of a checkpoint directory: state.safetensors, or the
    state.pt of a run saved before it, read with torch.load(weights_only=True) (tensors and plain
    containers only: a pickle that would run code is refused)."""
    path = checkpoint / STATE_DIR / STATE_FILE
    legacy = checkpoint / STATE_DIR / LEGACY_STATE_FILE
    if not path.is_file() and legacy.is_file():
        return _load_legacy_state(legacy)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()
            tensors = {name: handle.get_tensor(name) for name in names}
        if metadata.get("format") != _STATE_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, not {_STATE_FORMAT}")
        return _decode(json.loads(metadata["state"]), tensors)
    except FileNotFoundError:
        raise CheckpointError(f"missing trainer state {path}; cannot resume from it") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from None


def _load_legacy_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or hostile file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is truncated, corrupt or holds more than tensors and plain data ({first}); "
            "lmforge never unpickles arbitrary objects"
        ) from None
