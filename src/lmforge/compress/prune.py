"""Pruning: global magnitude pruning of weights, and structured pruning of heads and neurons.

Unstructured: the fraction `sparsity` of the smallest |w| over every linear weight inside the
blocks becomes zero (`torch.nn.utils.prune.global_unstructured` with L1 magnitude), keeping
masks while a recovery fine-tune runs, then made permanent. The embeddings and the output head
stay dense (the head is the embedding when tied). Zeros alone make nothing smaller or faster.

Structured: whole attention heads (rows of q, k, v and columns of the output projection) or
MLP neurons (rows of fc, columns of proj) are cut out, so the matrices really shrink. The same
number is removed from every block (the config holds one n_head and one mlp_hidden), chosen
per block by importance: the L2 norm of what the unit writes into the residual stream times
the norm of what it reads.
"""

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import prune

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model import BERT, GPT

Transformer = GPT | BERT  # both have .cfg and .blocks of Attention + MLP

# ---------------------------------------------------------------- unstructured


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers inside the Transformer blocks: what magnitude pruning may zero."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.")
    ]


def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """Mask the `sparsity` fraction of smallest-magnitude block weights, globally ranked."""
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in (0, 1), e.g. 0.5; got {sparsity}")
    targets = [(m, "weight") for _, m in prunable_linears(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(model: nn.Module) -> None:
    """Fold the masks into the weights (zeros stay zeros) and drop the pruning hooks."""
    for _, module in prunable_linears(model):
        if prune.is_pruned(module):
            prune.remove(module, "weight")


def sparsity_by_layer(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights in every prunable layer, and over all of them ("total")."""
    report, zeros, count = {}, 0, 0
    for name, module in prunable_linears(model):
        weight = module.weight
        n_zero = int((weight == 0).sum())
        report[name] = n_zero / weight.numel()
        zeros, count = zeros + n_zero, count + weight.numel()
    report["total"] = zeros / max(count, 1)
    return report


# ---------------------------------------------------------------- structured


def head_importance(model: Transformer) -> torch.Tensor:
    """(n_layer, n_head): ‖W_o columns of head h‖ · ‖W_q, W_k, W_v rows of head h‖."""
    cfg = model.cfg
    if cfg.kv_heads != cfg.n_head:
        raise ConfigError("head pruning needs n_kv_head == n_head (no grouped-query attention)")
    scores = []
    for block in model.blocks:
        D, H = cfg.head_dim, cfg.n_head
        qkv = block.attn.qkv.weight.detach().view(3, H, D, -1)  # (q|k|v, H, D, C)
        out = block.attn.proj.weight.detach().view(-1, H, D)  # (C, H, D)
        reads = qkv.pow(2).sum(dim=(0, 2, 3)).sqrt()
        writes = out.pow(2).sum(dim=(0, 2)).sqrt()
        scores.append(reads * writes)
    return torch.stack(scores)


def neuron_importance(model: Transformer) -> torch.Tensor:
    """(n_layer, mlp_width): ‖fc row of neuron j‖ · ‖proj column of neuron j‖."""
    scores = []
    for block in model.blocks:
        reads = block.mlp.fc.weight.detach().norm(dim=1)
        writes = block.mlp.proj.weight.detach().norm(dim=0)
        scores.append(reads * writes)
    return torch.stack(scores)


def _keep(scores: torch.Tensor, remove: int) -> torch.Tensor:
    """Indices (n_layer, kept) of the most important units of each layer, in their order."""
    kept = scores.shape[1] - remove
    return scores.topk(kept, dim=1).indices.sort(dim=1).values


def _rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    """A smaller linear layer with the output rows `index` of linear."""
    new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index])
    return new


def _columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    """A smaller linear layer reading only the input columns `index` of linear."""
    new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    new.is_residual_projection = True
    return new


def prune_heads(model: Transformer, fraction: float) -> Transformer:
    """A new, smaller model without the least important `fraction` of heads of every block."""
    cfg = model.cfg
    remove = math.floor(cfg.n_head * fraction)
    if not 0 < remove < cfg.n_head:
        raise ConfigError(
            f"--sparsity {fraction} removes {remove} of {cfg.n_head} heads per block; "
            f"choose a fraction that removes between 1 and {cfg.n_head - 1}"
        )
    keep = _keep(head_importance(model), remove)
    D, H = cfg.head_dim, cfg.n_head
    new_cfg = replace(cfg, n_head=H - remove, n_kv_head=0, head_size=D)
    pruned = _copy_into(model, new_cfg)
    for block, old, heads in zip(pruned.blocks, model.blocks, keep, strict=True):
        dims = (heads[:, None] * D + torch.arange(D)).reshape(-1)  # feature index of each kept
        rows = torch.cat([dims, H * D + dims, 2 * H * D + dims])
        block.attn.qkv = _rows(old.attn.qkv, rows)
        block.attn.proj = _columns(old.attn.proj, dims)
    return pruned.eval()


def prune_neurons(model: Transformer, fraction: float) -> Transformer:
    """A new, smaller model without the least important `fraction` of MLP neurons per block."""
    cfg = model.cfg
    remove = math.floor(cfg.mlp_width * fraction)
    if not 0 < remove < cfg.mlp_width:
        raise ConfigError(
            f"--sparsity must be in (0, 1) and remove at least one neuron; got {fraction}"
        )
    keep = _keep(neuron_importance(model), remove)
    pruned = _copy_into(model, replace(cfg, mlp_hidden=cfg.mlp_width - remove))
    for block, old, neurons in zip(pruned.blocks, model.blocks, keep, strict=True):
        block.mlp.fc = _rows(old.mlp.fc, neurons)
        block.mlp.proj = _columns(old.mlp.proj, neurons)
    return pruned.eval()


def _copy_into(model: Transformer, cfg: ModelConfig) -> Transformer:
    """A model of the new config holding every tensor of model whose shape did not change."""
    new = type(model)(cfg)
    own = new.state_dict()
    same = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
    new.load_state_dict(same, strict=False)
    return new
