"""torch.distributed plumbing: one process per device, started by torchrun (or `--nproc`).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; init_distributed reads them and joins the
process group (NCCL on CUDA, gloo on CPU). Without them the run is a plain single process.
Every rank draws its own rows of one global batch (the same rows a single process with the
whole batch would draw), so results do not depend on timing or on the number of processes.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lmforge.data.batches import Batch


@dataclass(frozen=True, slots=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """How many processes torchrun started for this job (1 outside torchrun); readable before
    the process group exists, e.g. to size a fine-tune's epochs by the global batch."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def launched_rank() -> int:
    """This process's rank in a torchrun launch (0 outside torchrun), before the group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str) -> DistContext:
    """Join torchrun's process group if this is one of its workers."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank, world_size, local_rank)


def shutdown() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_choice(choice: str, ctx: DistContext) -> str:
    """Rank 0's string on every rank (itself in a single process)."""
    if not ctx.active:
        return choice
    box = [choice]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def mean_across_ranks(value: float) -> float:
    """The mean of a number over all ranks (itself in a single process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank_rows(batch: Batch, ctx: DistContext) -> Batch:
    """This rank's equal share of the rows of a global batch."""
    if not ctx.active:
        return batch
    rows = batch.inputs.shape[0]
    if rows % ctx.world_size:
        raise ValueError(f"a global batch of {rows} rows does not split over {ctx.world_size}")
    size = rows // ctx.world_size
    part = slice(ctx.rank * size, (ctx.rank + 1) * size)
    fields = {}
    for name in batch.__slots__:
        value = getattr(batch, name)
        fields[name] = value[part] if isinstance(value, torch.Tensor) else value
    return Batch(**fields)


def shard(model: torch.nn.Module, dtype: str, device: torch.device) -> None:
    """FSDP2: shard every block, then the rest at the root; bf16 compute with fp32 gradient
    reduction on CUDA when train.dtype=bfloat16."""
    policy = MixedPrecisionPolicy()
    if device.type == "cuda" and dtype == "bfloat16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded model on the CPU, each tied tensor once."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    tensors = get_model_state_dict(model, options=options)
    if getattr(model.cfg, "tie_weights", False):
        tensors.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight
    return {name: t.contiguous() for name, t in tensors.items()}


def fill_shards(sharded: torch.nn.Module, full: torch.nn.Module | None) -> None:
    """Copy rank 0's full model (None on the other ranks) into every rank's shards and buffers:
    a model built on the meta device and sharded never exists whole on the other ranks."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(sharded, full.state_dict() if full is not None else {}, options=options)
    with torch.no_grad():  # buffers (e.g. RoPE tables) are not sharded and not in state dicts
        for name, buffer in sharded.named_buffers():
            if full is not None:
                buffer.copy_(full.get_buffer(name))
            dist.broadcast(buffer, src=0)
