"""Normalisation, the position-wise feed-forward network and the residual block, against their
formulas written out per vector in float64.

LayerNorm(x) = (x − μ)/√(σ² + ε)·γ + β      RMSNorm(x) = x/√(mean(x²) + ε)·γ
FFN(x) = max(0, xW₁ + b₁)W₂ + b₂ (the original Transformer; lmforge does not use ReLU: the
reference lives here), GELU(x) = x·Φ(x), SwiGLU(x) = (silu(xW_gate) ⊙ xW_up)W₂.
Pre-norm (GPT): x + f(LN(x)); post-norm (the original Transformer, BERT): LN(x + f(x)).
"""

import math

import pytest
import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.model.bert import EncoderBlock
from lmforge.model.gpt import Block
from lmforge.model.layers import MLP, layer_norm


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (γ ≠ 1, β ≠ 0), so a missing term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return module.eval()


def layer_norm_by_hand(x: list[float], gamma: list[float], beta: list[float], eps: float) -> list:
    n = len(x)
    mean = sum(x) / n
    variance = sum((v - mean) ** 2 for v in x) / n  # biased: divide by n, not n − 1
    return [
        (v - mean) / math.sqrt(variance + eps) * g + b
        for v, g, b in zip(x, gamma, beta, strict=True)
    ]


def rms_norm_by_hand(x: list[float], gamma: list[float], eps: float) -> list[float]:
    rms = math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v / rms * g for v, g in zip(x, gamma, strict=True)]


def _close(got: torch.Tensor, expected: list[list[float]]) -> None:
    """float32 module against the float64 transcription."""
    reference = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(got.double(), reference, atol=1e-5, rtol=1e-5)


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(-1, x.shape[-1]).double().tolist()


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layer_norm_matches_the_formula(eps: float) -> None:
    norm = _randomise(layer_norm(ModelConfig(n_embd=6, n_head=2, ln_eps=eps)), 0)
    x = torch.randn(3, 4, 6) * 3 + 1
    gamma, beta = norm.weight.tolist(), norm.bias.tolist()
    expected = [layer_norm_by_hand(row, gamma, beta, eps) for row in _rows(x)]
    with torch.no_grad():
        got = norm(x)
    _close(got.reshape(-1, 6), expected)


@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_rms_norm_matches_the_formula(eps: float) -> None:
    norm = _randomise(layer_norm(ModelConfig(n_embd=6, n_head=2, norm="rmsnorm", ln_eps=eps)), 1)
    x = torch.randn(3, 4, 6) * 3 + 1
    expected = [rms_norm_by_hand(row, norm.weight.tolist(), eps) for row in _rows(x)]
    with torch.no_grad():
        got = norm(x)
    _close(got.reshape(-1, 6), expected)


def gelu_exact(v: float) -> float:
    """x·Φ(x), Φ the standard normal CDF: x/2·(1 + erf(x/√2))."""
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def gelu_tanh(v: float) -> float:
    """GPT-2's approximation: x/2·(1 + tanh(√(2/π)·(x + 0.044715x³)))."""
    return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


def silu(v: float) -> float:
    return v / (1 + math.exp(-v))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def relu_ffn_by_hand(x: list[float], w1, b1, w2, b2) -> list[float]:
    """REFERENCE ONLY (lmforge has no ReLU FFN): max(0, xW₁ + b₁)W₂ + b₂, weights as lists of
    rows in nn.Linear's (out, in) layout."""
    hidden = [
        max(0.0, sum(a * w for a, w in zip(x, row, strict=True)) + b)
        for row, b in zip(w1, b1, strict=True)
    ]
    return [
        sum(h * w for h, w in zip(hidden, row, strict=True)) + b
        for row, b in zip(w2, b2, strict=True)
    ]


def ffn_by_hand(mlp: MLP, x: list[float], activation: str) -> list[float]:
    w1, b1 = mlp.fc.weight.tolist(), mlp.fc.bias.tolist()
    w2, b2 = mlp.proj.weight.tolist(), mlp.proj.bias.tolist()
    pre = [
        sum(a * w for a, w in zip(x, row, strict=True)) + b for row, b in zip(w1, b1, strict=True)
    ]
    if activation == "swiglu":
        half = len(pre) // 2
        hidden = [silu(gate) * up for gate, up in zip(pre[:half], pre[half:], strict=True)]
    elif activation == "relu2":
        hidden = [max(0.0, v) ** 2 for v in pre]
    else:
        hidden = [(gelu_exact if activation == "gelu" else gelu_tanh)(v) for v in pre]
    return [
        sum(h * w for h, w in zip(hidden, row, strict=True)) + b
        for row, b in zip(w2, b2, strict=True)
    ]


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "swiglu", "relu2"])
def test_the_feed_forward_network_matches_its_formula(activation: str) -> None:
    cfg = ModelConfig(n_embd=4, n_head=2, activation=activation, mlp_hidden=6)
    mlp = _randomise(MLP(cfg), 2)
    x = torch.randn(5, 4)
    expected = [ffn_by_hand(mlp, row, activation) for row in _rows(x)]
    with torch.no_grad():
        got = mlp(x)
    _close(got, expected)


def test_the_gelu_variants_differ_and_relu_is_neither() -> None:
    """The two GELUs are close but not equal, so picking one is a real choice; the ReLU of the
    original paper's FFN is zero for negative inputs, where GELU is not."""
    assert abs(gelu_exact(1.0) - gelu_tanh(1.0)) > 1e-5
    assert abs(gelu_exact(1.0) - gelu_tanh(1.0)) < 1e-3
    w1, b1, w2, b2 = [[1.0], [-1.0]], [0.0, 0.0], [[1.0, 1.0]], [0.0]
    assert relu_ffn_by_hand([-2.0], w1, b1, w2, b2) == [2.0]  # |x| = relu(x) + relu(−x)
    assert gelu_exact(-2.0) < 0


def test_a_gpt_block_is_pre_norm() -> None:
    """x + attn(LN₁(x)), then + mlp(LN₂(·)): the residual path carries x untouched."""
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=5)
    block = _randomise(Block(cfg, 0), 3)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = x + block.attn(block.ln_1(x), None, None)
        expected = h + block.mlp(block.ln_2(h))
        post_norm = block.ln_2(h + block.mlp(h))
        got = block(x, None, None)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, post_norm, atol=1e-3)


def test_a_bert_block_is_post_norm() -> None:
    """LN₁(x + attn(x)), then LN₂(· + mlp(·)): as the original Transformer and BERT."""
    cfg = ModelConfig(arch="bert", n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=5)
    block = _randomise(EncoderBlock(cfg, 0), 4)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = block.ln_1(x + block.attn(x))
        expected = block.ln_2(h + block.mlp(h))
        got = block(x, None)
    torch.testing.assert_close(got, expected)
