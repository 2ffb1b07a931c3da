"""Token embeddings and the original Transformer's sinusoidal positions against their formulas.

PE(p, 2i) = sin(p / 10000^(2i/d_model)),  PE(p, 2i+1) = cos(p / 10000^(2i/d_model)).
The mistaken variant some tutorials copy (exponent i/d_model for every dimension) is written
here too, marked as such, to show numerically what it breaks.
"""

import math

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model import GPT
from lmforge.model.gpt import embed_with_sinusoids
from lmforge.model.layers import sinusoidal_positions


def sinusoids_by_hand(positions: int, width: int) -> torch.Tensor:
    """The paper's formula, one entry at a time with math.sin / math.cos (float64)."""
    table = torch.zeros(positions, width, dtype=torch.float64)
    for p in range(positions):
        for i in range(width // 2):
            angle = p / 10000 ** (2 * i / width)
            table[p, 2 * i] = math.sin(angle)
            table[p, 2 * i + 1] = math.cos(angle)
    return table


def mistaken_sinusoids(positions: int, width: int) -> torch.Tensor:
    """NOT the formula (a mistake kept for the demonstration): every dimension j gets its own
    frequency 10000^(−j/d), so a sine and the cosine beside it no longer share an angle."""
    table = torch.zeros(positions, width, dtype=torch.float64)
    for p in range(positions):
        for j in range(width):
            angle = p / 10000 ** (j / width)
            table[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize(("positions", "width"), [(16, 8), (50, 32), (7, 2)])
def test_sinusoidal_positions_match_the_formula(positions: int, width: int) -> None:
    got = sinusoidal_positions(positions, width)
    assert got.shape == (positions, width)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), sinusoids_by_hand(positions, width), atol=1e-6, rtol=0)


def _shift_residual(table: torch.Tensor, offset: int) -> float:
    """How far PE(p + offset) is from the best linear map of PE(p), over every p (least squares).
    For the true encoding the map is a rotation, the same for every p: residual ~0."""
    source, target = table[:-offset], table[offset:]
    solution = torch.linalg.lstsq(source, target).solution
    return float((source @ solution - target).abs().max())


def test_a_shift_of_positions_is_one_linear_map_only_for_the_true_formula() -> None:
    """The property the paper chose sinusoids for (§3.5): PE(p + k) is a linear function of
    PE(p). It holds for the formula and fails for the mistaken exponent."""
    right = sinusoids_by_hand(64, 16)
    wrong = mistaken_sinusoids(64, 16)
    assert _shift_residual(right, 5) < 1e-8
    assert _shift_residual(wrong, 5) > 1e-2


def test_embedding_lookup_is_one_hot_times_the_matrix() -> None:
    """E[token] = onehot(token)·E, and the tied head scores h against every row: logits = h·Eᵀ."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=13))
    ids = torch.tensor([[3, 0, 12, 3]])
    one_hot = torch.nn.functional.one_hot(ids, 13).double()
    expected = one_hot @ model.tok_emb.weight.detach().double()
    torch.testing.assert_close(model.tok_emb(ids).detach().double(), expected)
    assert model.lm_head.weight is model.tok_emb.weight


def _sincos_gpt(n_embd: int = 16) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=1, n_head=2, n_embd=n_embd, block_size=12, vocab_size=23, pos_emb="sincos"
    )
    return GPT(cfg)


def test_a_sincos_model_adds_scaled_embeddings_and_the_table() -> None:
    """Its input is √d_model·E[token] + PE[position] (§3.4), with no learned position table."""
    model = _sincos_gpt()
    assert model.pos_emb is None
    assert "sincos_positions" not in model.state_dict()  # fixed: rebuilt, never saved
    ids = torch.tensor([[5, 1, 7]])
    tokens = model.tok_emb(ids)
    expected = tokens * 4.0 + sinusoidal_positions(12, 16)[:3]
    torch.testing.assert_close(embed_with_sinusoids(tokens, model.sincos_positions[:3]), expected)


def _loss_after_training(model: GPT, steps: int = 150) -> float:
    """Train on "predict the token two places back", which needs positions; the last loss."""
    torch.set_num_threads(1)  # small matmuls: threads only add overhead
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 23, (32, 12), generator=g)
        targets = torch.full_like(ids, -100)
        targets[:, 2:] = ids[:, :-2]
        loss = model(ids, targets=targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_a_sincos_gpt_learns_a_position_dependent_task_and_needs_its_table() -> None:
    """Trainable end to end: the loss falls far under chance (ln 23 ≈ 3.1). The switch does
    the work: the same model with its table zeroed cannot tell two places back and stays high."""
    threads = torch.get_num_threads()
    try:
        assert _loss_after_training(_sincos_gpt(n_embd=32)) < 0.5
        blind = _sincos_gpt(n_embd=32)
        blind.sincos_positions.zero_()
        assert _loss_after_training(blind) > 2.0
    finally:
        torch.set_num_threads(threads)


def test_sincos_needs_an_even_width_and_is_refused_for_bert() -> None:
    with pytest.raises(LMForgeError, match="even"):
        ModelConfig(n_embd=15, n_head=3, pos_emb="sincos")
    with pytest.raises(LMForgeError, match="learned"):
        ModelConfig(arch="bert", pos_emb="sincos")


def test_a_sincos_model_is_not_exported_as_another_architecture() -> None:
    """No transformers decoder adds fixed sinusoids: export refuses instead of writing a
    GPT-NeoX whose rotary positions would silently compute something else."""
    from lmforge.interop.hf_config import export_model_type

    with pytest.raises(LMForgeError, match="sincos"):
        export_model_type(ModelConfig(pos_emb="sincos", vocab_size=10))
