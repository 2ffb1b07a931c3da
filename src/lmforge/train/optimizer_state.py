"""The optimizer's state as a sharded checkpoint that any world size and strategy can resume.

`torch.distributed.checkpoint` (DCP) writes the AdamW moments keyed by parameter name (not by
position), each rank its own shard of every tensor, in safetensors files whose headers say which
slice they hold. Loading reshards: a run saved by 2 FSDP ranks resumes on 1 process, on 4, or
under DDP. No pickle is involved: hyperparameters (lr, betas, ...) come from the config.
"""

import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from lmforge.errors import CheckpointError
from lmforge.rundir.files import writing
from lmforge.rundir.layout import STATE_DIR

_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def _tensor_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{'state.<param name>.<exp_avg|exp_avg_sq|step>': tensor, 'param_groups...': values}."""
    with warnings.catch_warnings():  # DCP warns when there is no process group: that is fine
        warnings.simplefilter("ignore", UserWarning)
        return get_optimizer_state_dict(model, optimizer, options=_FLAT)


def save_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank writes its shards into path (a collective under torchrun; path must exist).

    Only safetensors files are written (save_distributed without consolidation writes no
    metadata file, so no pickle). A full disk or an I/O error is a DiskError; the checkpoint
    being staged (path's checkpoints/step_N.tmp) is removed, the previous one stays whole."""
    flat = _tensor_state(model, optimizer)
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    writer = HuggingFaceStorageWriter(str(path), save_distributed=True)
    try:
        with writing(path), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, storage_writer=writer)
    except BaseException:
        shutil.rmtree(_staging_root(path), ignore_errors=True)
        raise


def _staging_root(path: Path) -> Path:
    """checkpoints/step_N.tmp for path = step_N.tmp/trainer_state/optimizer; else path."""
    staging = path.parent.parent
    if path.parent.name == STATE_DIR and staging.name.endswith(".tmp"):
        return staging
    return path


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Fill the optimizer from a saved state, resharded to this world size and strategy."""
    flat = _tensor_state(model, optimizer)  # creates the state tensors to read into
    tensors = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    if not path.is_dir():
        raise CheckpointError(f"missing optimizer state {path}; cannot resume from it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            wanted = _saved_part(tensors, path)
            dcp.load(wanted, storage_reader=HuggingFaceStorageReader(str(path)))
            tensors.update(wanted)
    except Exception as exc:  # DCP raises many types for missing keys and damaged files
        raise CheckpointError(
            f"{path}: the optimizer state does not fit this model or is damaged ({exc}); "
            "start a new run from the weights instead"
        ) from None
    flat.update(tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        set_optimizer_state_dict(model, optimizer, flat, options=_FLAT)


def _saved_part(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The entries of tensors to read from the checkpoint at path: all of them, less every
    parameter with no state saved at all. AdamW keeps no state for a parameter that has never
    had a gradient (a BERT's NSP head under objective mlm); its zeros here are that same fresh
    state. A parameter with only part of its state saved is left in, and fails to load."""
    saved = set(HuggingFaceStorageReader(str(path)).read_metadata().state_dict_metadata)
    stateless = {
        key.rsplit(".", 1)[0] for key in tensors if key.startswith("state.") and key not in saved
    }
    stateless = {
        param
        for param in stateless
        if not any(k.startswith(param + ".") and k in saved for k in tensors)
    }
    return {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in stateless}
