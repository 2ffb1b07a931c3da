"""`lmforge estimate`: what a config costs before it runs: parameters, FLOPs per token, and
memory per device for weights, gradients, AdamW states and activations under none/ddp/fsdp.

Memory model (bytes per parameter, P = parameters, W = world size):
- weights 4 (fp32 masters), gradients 4, AdamW moments 8; `none` and `ddp` hold all of them on
  every device, `fsdp` holds 1/W of each (plus one block's full weights while it computes).
- activations per micro-batch of B sequences of T tokens, per block, kept for the backward
  pass: about 17·B·T·C values (Korthikanti et al. 2022 count 34·B·T·C bytes at 2 bytes a
  value; their 5·H·T²·B attention term is left out because SDPA's fused kernels keep no T×T
  matrix), 2 bytes each in bf16 and 4 in fp32, plus the logits B·T·V; activation
  checkpointing keeps only each block's input, B·T·C values.
These are estimates: allocator slack and temporary buffers come on top.
"""

from typing import Any

import torch

from lmforge.config import RunConfig
from lmforge.errors import ConfigError
from lmforge.rundir.load import build_model

GIB = 2**30


def count_parameters(cfg: RunConfig) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of cfg's model, built on the meta device."""
    if cfg.model.vocab_size <= 0:
        raise ConfigError("set model.vocab_size (e.g. --set model.vocab_size=50257) to estimate")
    with torch.device("meta"):
        model = build_model(cfg)
    return model.num_params(), float(model.flops_per_token())


def activation_bytes(cfg: RunConfig) -> float:
    """Activations one device keeps for the backward pass of one micro-batch."""
    m, t = cfg.model, cfg.train
    # bf16 / fp16 autocast keeps 2-byte activations; auto may stay fp32: count 4 (an upper bound)
    value = 4 if t.dtype in ("float32", "auto") else 2
    tokens = t.batch_size * m.block_size
    full_block = 17 * tokens * m.n_embd
    logits = tokens * m.vocab_size
    if cfg.dist.activation_checkpointing:  # each block's input, plus one block recomputed
        return (m.n_layer * tokens * m.n_embd + full_block + logits) * value
    return (m.n_layer * full_block + logits) * value


def memory_per_device(cfg: RunConfig, params: int, world_size: int) -> dict[str, float]:
    """Bytes per device by kind, for cfg.dist.strategy over world_size processes."""
    shard = world_size if cfg.dist.strategy == "fsdp" else 1
    unsharded_block = 0.0
    if shard > 1:  # FSDP gathers one block's full weights at a time
        unsharded_block = 4 * params / max(cfg.model.n_layer, 1)
    return {
        "weights": 4 * params / shard + unsharded_block,
        "gradients": 4 * params / shard,
        "optimizer": 8 * params / shard,
        "activations": activation_bytes(cfg),
    }


def estimate(cfg: RunConfig, world_size: int = 1) -> dict[str, Any]:
    """The figures `lmforge estimate` prints, as a dict (bytes, FLOPs, tokens)."""
    if world_size < 1:
        raise ConfigError("--world-size must be >= 1")
    if cfg.dist.strategy == "none" and world_size > 1:
        raise ConfigError("--world-size > 1 needs --set dist.strategy=ddp or fsdp")
    params, flops = count_parameters(cfg)
    memory = memory_per_device(cfg, params, world_size)
    micro = cfg.train.batch_size * cfg.model.block_size
    return {
        "parameters": params,
        "flops_per_token": flops,
        "strategy": cfg.dist.strategy,
        "world_size": world_size,
        "tokens_per_step": micro * cfg.train.grad_accum * world_size,
        "memory_per_device": memory,
        "total_per_device": sum(memory.values()),
    }


def format_estimate(result: dict[str, Any]) -> str:
    """The estimate as aligned text (GiB)."""
    lines = [
        f"parameters        {result['parameters']:,}",
        f"FLOPs per token   {result['flops_per_token']:.3g} (6N + attention)",
        f"tokens per step   {result['tokens_per_step']:,} (micro batch x accumulation x "
        f"{result['world_size']} devices)",
        f"memory per device ({result['strategy']}, {result['world_size']} devices):",
    ]
    for kind, size in result["memory_per_device"].items():
        lines.append(f"  {kind:<12} {size / GIB:8.2f} GiB")
    lines.append(f"  {'total':<12} {result['total_per_device'] / GIB:8.2f} GiB")
    return "\n".join(lines)
