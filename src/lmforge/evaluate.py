"""Evaluation metrics: perplexity of a model over a token split."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.shards import TokenShards


@dataclass(frozen=True, slots=True)
class Perplexity:
    """Mean next-token cross-entropy and its exponential over the tokens scored."""

    loss: float
    perplexity: float
    tokens: int


@torch.inference_mode()
def split_perplexity(
    model: nn.Module, shards: TokenShards, split: str, block_size: int, batch_size: int = 16
) -> Perplexity:
    """exp(mean CE) over a whole split, read in non-overlapping windows (each token scored once)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    windows = list(shards.sequential_windows(split, block_size + 1))
    for start in range(0, len(windows), batch_size):
        chunk = torch.stack(windows[start : start + batch_size]).to(device)  # (B, T+1)
        logits = model(chunk[:, :-1])  # (B, T, V)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), chunk[:, 1:].reshape(-1), reduction="sum"
        )
        total += losses.item()
        count += chunk[:, 1:].numel()
    loss = total / max(count, 1)
    return Perplexity(loss=loss, perplexity=math.exp(min(loss, 700)), tokens=count)
