"""Objectives: each loss equals its formula computed the slow, obvious way; metrics by hand."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.data.batches import Batch
from lmforge.model import BERT
from lmforge.train.objectives import (
    IGNORE_INDEX,
    classification_loss,
    mlm_loss,
    mlm_nsp_loss,
    mlm_nsp_metrics,
    nsp_loss,
)

V = 97


def _bert() -> BERT:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="bert", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=V)
    return BERT(cfg)


def _mlm_batch(seed: int = 0, batch: int = 4, length: int = 12) -> Batch:
    """Random ids, right padding, about 15% of real positions masked, NSP labels."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(5, V, (batch, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]  # (B, T)
    chosen = (torch.rand(batch, length, generator=g) < 0.15) & mask
    chosen[:, 1] = True  # at least one masked position per row
    targets = torch.where(chosen, torch.randint(5, V, (batch, length), generator=g), IGNORE_INDEX)
    types = (torch.arange(length)[None] >= 4).long() & mask
    labels = torch.randint(0, 2, (batch,), generator=g)
    return Batch(inputs, targets, types, mask, labels)


def _full_mlm_loss(model: BERT, batch: Batch) -> torch.Tensor:
    logits = model(batch.inputs, batch.token_types, batch.attention_mask).mlm  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, V), batch.targets.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlm_loss_on_gathered_positions_equals_full_logits_loss(seed: int) -> None:
    model, batch = _bert().eval(), _mlm_batch(seed)
    fast = mlm_loss(model, batch)
    fast.backward()
    fast_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    slow = _full_mlm_loss(model, batch)
    slow.backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    slow_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert fast_grads.keys() == slow_grads.keys()
    assert "tok_emb.weight" in fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, slow_grads[name], rtol=1e-4, atol=1e-6)


def test_mlm_loss_with_nothing_masked_is_a_differentiable_zero() -> None:
    model, batch = _bert(), _mlm_batch()
    batch = Batch(batch.inputs, torch.full_like(batch.targets, IGNORE_INDEX))
    loss = mlm_loss(model, batch)
    loss.backward()
    assert loss.item() == 0.0


def test_nsp_loss_is_cross_entropy_of_the_nsp_head() -> None:
    model, batch = _bert().eval(), _mlm_batch()
    logits = model(batch.inputs, batch.token_types, batch.attention_mask).nsp
    torch.testing.assert_close(nsp_loss(model, batch), F.cross_entropy(logits, batch.labels))


def test_mlm_nsp_loss_is_the_sum_and_mlm_only_without_labels() -> None:
    model, batch = _bert().eval(), _mlm_batch(3)
    torch.testing.assert_close(
        mlm_nsp_loss(model, batch), mlm_loss(model, batch) + nsp_loss(model, batch)
    )
    unlabelled = Batch(batch.inputs, batch.targets, batch.token_types, batch.attention_mask)
    torch.testing.assert_close(mlm_nsp_loss(model, unlabelled), mlm_loss(model, batch))
    with pytest.raises(ValueError, match="labels"):
        nsp_loss(model, unlabelled)


class _Linear3(nn.Module):
    """A classifier stand-in: logits = W · mean of one-hot inputs (K = 3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(V, 3)

    def forward(self, idx, token_types=None, attention_mask=None) -> torch.Tensor:
        return self.proj(F.one_hot(idx, V).float().mean(1))


def test_classification_loss_with_smoothing_and_weights_matches_the_formula() -> None:
    torch.manual_seed(0)
    model = _Linear3()
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        torch.randint(0, V, (6, 5), generator=g),
        torch.full((6, 5), IGNORE_INDEX),
        labels=torch.tensor([0, 1, 2, 2, 1, 2]),
    )
    eps, w = 0.1, torch.tensor([1.0, 2.0, 0.5])
    loss = partial(classification_loss, label_smoothing=eps, class_weights=w.tolist())
    logp = F.log_softmax(model(batch.inputs), dim=-1)  # (B, K)
    target = (1 - eps) * F.one_hot(batch.labels, 3) + eps / 3
    per_row = -(w * target * logp).sum(1)  # torch weights each class term by w_c
    want = per_row.sum() / w[batch.labels].sum()
    torch.testing.assert_close(loss(model, batch), want)
    plain = F.cross_entropy(model(batch.inputs), batch.labels)
    torch.testing.assert_close(classification_loss(model, batch), plain)


class _EchoEncoder(nn.Module):
    """Hidden = 5·onehot(input): the MLM head predicts the input token itself, and the NSP head
    predicts class 1 when the first token is odd."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def encode(self, idx, token_types=None, attention_mask=None) -> torch.Tensor:
        return 5.0 * F.one_hot(idx, V).float()  # (B, T, V)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        odd = hidden[:, 0, 1::2].sum(1) > 0
        return 5.0 * F.one_hot(odd.long(), 2).float()


def test_mlm_nsp_metrics_by_hand() -> None:
    x = IGNORE_INDEX
    # batch 1: 3 masked tokens, 1 right (input 7 == target 7); NSP 1 of 2 right
    first = Batch(
        torch.tensor([[2, 7, 9], [3, 4, 4]]),
        torch.tensor([[x, 7, 8], [x, 6, x]]),
        labels=torch.tensor([0, 0]),
    )
    # batch 2: 2 masked tokens, both right; NSP 2 of 2 right
    second = Batch(
        torch.tensor([[5, 5, 5], [6, 11, 12]]),
        torch.tensor([[x, x, 5], [x, 11, x]]),
        labels=torch.tensor([1, 0]),
    )
    metrics = mlm_nsp_metrics(_EchoEncoder(), [first, second])
    right = -math.log(math.exp(5) / (math.exp(5) + V - 1))
    wrong = -math.log(1 / (math.exp(5) + V - 1))
    assert metrics["mlm_accuracy"] == pytest.approx(3 / 5)  # pooled, not (1/3 + 2/2) / 2
    # the echo model only copies: right on the 3 visible targets, wrong on the 2 it cannot see
    assert metrics["mlm_hidden_accuracy"] == 0.0
    assert metrics["mlm_loss"] == pytest.approx((3 * right + 2 * wrong) / 5)
    nsp_right = -math.log(math.exp(5) / (math.exp(5) + 1))
    nsp_wrong = -math.log(1 / (math.exp(5) + 1))
    assert metrics["nsp_accuracy"] == pytest.approx(3 / 4)
    assert metrics["nsp_loss"] == pytest.approx((3 * nsp_right + nsp_wrong) / 4)


def test_mlm_metrics_without_nsp_labels_leave_out_nsp() -> None:
    batch = Batch(torch.tensor([[1, 2]]), torch.tensor([[1, IGNORE_INDEX]]))
    metrics = mlm_nsp_metrics(_EchoEncoder(), [batch])
    assert set(metrics) == {"mlm_loss", "mlm_accuracy", "mlm_hidden_accuracy"}
    assert math.isnan(metrics["mlm_hidden_accuracy"])  # the one target is visible: none hidden


class _GuessEncoder(_EchoEncoder):
    """Predicts token 8 everywhere: right wherever the target is 8, whatever the input shows."""

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return 5.0 * F.one_hot(torch.full(hidden.shape[:-1], 8), V).float()


def test_hidden_accuracy_counts_only_targets_the_input_does_not_show() -> None:
    x = IGNORE_INDEX
    # scored: (7 shows 7), (9 hides 8), (4 hides 6), (8 shows 8), (3 hides 8)
    batch = Batch(torch.tensor([[2, 7, 9], [4, 8, 3]]), torch.tensor([[x, 7, 8], [6, 8, 8]]))
    metrics = mlm_nsp_metrics(_GuessEncoder(), [batch])
    assert metrics["mlm_accuracy"] == pytest.approx(3 / 5)  # the three targets that are 8
    assert metrics["mlm_hidden_accuracy"] == pytest.approx(2 / 3)  # 8 at two of three hidden
