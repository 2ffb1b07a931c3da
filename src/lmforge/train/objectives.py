"""Training objectives: pure functions (model, batch) -> scalar loss."""

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import Batch

IGNORE_INDEX = -100


def clm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Causal-LM loss: mean over positions of -log p(x_{t+1} | x_{≤t}), ignoring targets of -100."""
    logits = model(batch.inputs)  # (B, T, V)
    return F.cross_entropy(
        logits.view(-1, logits.size(-1)), batch.targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
