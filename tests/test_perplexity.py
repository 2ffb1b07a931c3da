"""Split perplexity: exp of the mean cross-entropy over every scored token, however batched."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.data.shards import TokenShards
from lmforge.evaluate import split_perplexity
from lmforge.model import GPT


def _model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=vocab_size)
    return GPT(cfg).eval()


def _by_hand(model: GPT, shards: TokenShards, split: str, block_size: int) -> tuple[float, int]:
    """(Σ −log p over every target of every window) / their count, one window at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in shards.sequential_windows(split, block_size + 1):
            logits = model(window[None, :-1])[0]
            total += F.cross_entropy(logits, window[1:], reduction="sum").item()
            count += block_size
    return total / count, count


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_split_perplexity_is_exp_of_the_mean_token_loss(
    prepared_dir: Path, batch_size: int
) -> None:
    shards = TokenShards(prepared_dir)
    model = _model(shards.meta["vocab_size"])
    windows = len(list(shards.sequential_windows("val", 9)))
    assert windows > 3
    assert windows % 3  # batch_size 3 leaves a smaller last batch
    loss, count = _by_hand(model, shards, "val", 8)
    got = split_perplexity(model, shards, "val", block_size=8, batch_size=batch_size)
    assert got.tokens == count
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
