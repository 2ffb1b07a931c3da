"""The fused head + cross-entropy equals logits -> F.cross_entropy, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.model import GPT, fused_head
from lmforge.model.fused_head import linear_cross_entropy


def _reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.T
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-100)


def _grads(loss_fn, hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor):
    h = hidden.clone().requires_grad_(True)
    head.weight.grad = None
    loss = loss_fn(h, targets)
    loss.backward()
    return loss.detach(), h.grad, head.weight.grad.clone()


@pytest.mark.parametrize("chunk_elements", [1 << 23, 3 * 97])  # one chunk; chunks of 3 rows
def test_value_and_gradients_match_cross_entropy(
    chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_head, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False)
    hidden = torch.randn(2, 11, 16)
    targets = torch.randint(0, 97, (2, 11))
    targets[0, :4] = -100  # ignored positions
    ours = _grads(lambda h, t: linear_cross_entropy(h, head, t), hidden, head, targets)
    theirs = _grads(lambda h, t: _reference(h, head.weight, t), hidden, head, targets)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours[1][0, :4].abs().max() == 0  # an ignored position gets no gradient


def test_bf16_autocast_stays_close_and_the_loss_scale_passes_through() -> None:
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 200, bias=False)
    hidden = torch.randn(64, 32)
    targets = torch.randint(0, 200, (64,))
    reference = _reference(hidden, head.weight, targets)
    with torch.autocast("cpu", torch.bfloat16):
        fused = linear_cross_entropy(hidden, head, targets)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - reference.item()) < 0.02
    h = hidden.clone().requires_grad_(True)
    (3.0 * linear_cross_entropy(h, head, targets)).backward()  # d(3L)/dh = 3 dL/dh
    expected = hidden.clone().requires_grad_(True)
    (3.0 * _reference(expected, head.weight, targets)).backward()
    torch.testing.assert_close(h.grad, expected.grad, rtol=1e-5, atol=1e-6)


def test_no_scored_target_gives_nan_as_cross_entropy_does() -> None:
    head = torch.nn.Linear(8, 10, bias=False)
    targets = torch.full((5,), -100)
    assert torch.isnan(linear_cross_entropy(torch.randn(5, 8), head, targets))
    assert torch.isnan(_reference(torch.randn(5, 8), head.weight, targets))


def test_gpt_forward_with_targets_is_the_loss_of_its_logits() -> None:
    torch.manual_seed(2)
    model = GPT(ModelConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16))
    idx, targets = torch.randint(0, 50, (3, 12)), torch.randint(0, 50, (3, 12))
    loss = model(idx, targets=targets)
    logits = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()  # the tied head gets its gradient from both uses
    assert model.tok_emb.weight.grad is not None
    assert model.tok_emb.weight.grad.abs().sum() > 0


def test_a_replaced_head_falls_back_to_its_own_forward() -> None:
    """LoRA or a quantized head is not a plain Linear: its forward must run."""
    torch.manual_seed(3)
    model = GPT(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    calls = []

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape)
            return self.inner(x) * 2.0  # a visible change (a constant shift would not be)

    plain = model(torch.zeros(1, 8, dtype=torch.long), targets=torch.ones(1, 8, dtype=torch.long))
    model.lm_head = Wrapped(model.lm_head)
    idx, targets = torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)
    wrapped = model(idx, targets=targets)
    assert calls
    assert not torch.allclose(plain, wrapped)
