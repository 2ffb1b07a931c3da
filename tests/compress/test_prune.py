"""Pruning: global magnitude sparsity that recovery keeps, and heads/neurons really removed."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.compress.prune import (
    magnitude_prune,
    make_permanent,
    prune_heads,
    prune_neurons,
    sparsity_by_layer,
)
from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.batches import Batch
from lmforge.errors import ConfigError
from lmforge.model import BERT, GPT
from lmforge.train.optim import build_optimizer
from lmforge.train.trainer import Trainer

CFG = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=67, pos_emb="rope")


def _gpt(**changes: object) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG.__dict__, **changes}) if changes else CFG
    return GPT(cfg).eval()


def _ids(batch: int = 3) -> torch.Tensor:
    return torch.randint(0, 67, (batch, 16), generator=torch.Generator().manual_seed(1))


def _lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    logits = model(batch.inputs)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())


def test_global_magnitude_pruning_zeroes_the_smallest_weights_and_keeps_embeddings() -> None:
    model = _gpt()
    embedding = model.tok_emb.weight.detach().clone()
    weights = torch.cat([m.weight.detach().abs().flatten() for m in _block_linears(model)])
    threshold = weights.kthvalue(weights.numel() // 2).values
    magnitude_prune(model, 0.5)
    report = sparsity_by_layer(model)
    assert report["total"] == pytest.approx(0.5, abs=1e-3)
    assert set(report) == {
        *(n for n, _ in model.named_modules() if _is_block_linear(n, model)),
        "total",
    }
    for linear in _block_linears(model):  # every surviving weight is at least the threshold
        alive = linear.weight.detach()[linear.weight.detach() != 0]
        assert float(alive.abs().min()) >= float(threshold) - 1e-7
    torch.testing.assert_close(model.tok_emb.weight, embedding)


def test_recovery_lowers_the_loss_and_pruned_weights_stay_zero() -> None:
    model = _gpt()
    magnitude_prune(model, 0.6)
    zero_masks = [m.weight.detach() == 0 for m in _block_linears(model)]
    ids = _ids(8)
    batch = Batch(inputs=ids[:, :-1], targets=ids[:, 1:])
    # recovery as `compress prune --finetune-steps` runs it: the one Trainer, constant lr, clipped
    cfg = TrainConfig(
        max_steps=30, lr=3e-3, min_lr=3e-3, warmup_steps=0, grad_clip=1.0, progress=False
    )
    before = _lm_loss(model, batch).item()
    Trainer(
        model.train(), build_optimizer(model, cfg), lambda step, micro: batch, cfg, _lm_loss
    ).fit()
    assert _lm_loss(model, batch).item() < 0.8 * before
    make_permanent(model)
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())
    for mask, linear in zip(zero_masks, _block_linears(model), strict=True):
        assert bool((linear.weight[mask] == 0).all())
    assert sparsity_by_layer(model)["total"] == pytest.approx(0.6, abs=1e-3)


def test_heads_that_write_nothing_are_the_ones_removed_and_logits_stay() -> None:
    model = _gpt()
    D = CFG.head_dim
    with torch.no_grad():
        for block in model.blocks:  # heads 1 and 3 write nothing into the residual stream
            for head in (1, 3):
                block.attn.proj.weight[:, head * D : (head + 1) * D] = 0
        expected = model(_ids())
    pruned = prune_heads(model, 0.5)
    assert (pruned.cfg.n_head, pruned.cfg.head_dim) == (2, D)
    removed_per_block = 2 * (3 * D * CFG.n_embd + 3 * D) + 2 * D * CFG.n_embd
    assert model.num_params() - pruned.num_params() == CFG.n_layer * removed_per_block
    with torch.no_grad():
        torch.testing.assert_close(pruned(_ids()), expected, atol=1e-5, rtol=1e-5)
    reloaded = GPT(pruned.cfg)  # the config alone rebuilds the smaller shapes
    reloaded.load_state_dict(pruned.state_dict())


def test_neurons_that_write_nothing_are_the_ones_removed_and_logits_stay() -> None:
    model = _gpt()
    dead = torch.arange(0, 4 * CFG.n_embd, 4)  # every 4th neuron: a quarter of them
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.proj.weight[:, dead] = 0
        expected = model(_ids())
    pruned = prune_neurons(model, 0.25)
    assert pruned.cfg.mlp_hidden == 3 * CFG.n_embd
    assert pruned.blocks[0].mlp.fc.weight.shape == (3 * CFG.n_embd, CFG.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(pruned(_ids()), expected, atol=1e-5, rtol=1e-5)


def test_bert_heads_prune_too() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="bert", n_layer=1, n_head=4, n_embd=32, block_size=16, vocab_size=67)
    model = BERT(cfg).eval()
    pruned = prune_heads(model, 0.25)
    assert pruned.cfg.n_head == 3
    with torch.no_grad():
        out = pruned(_ids())
    assert out.mlm.shape == (3, 16, 67)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda m: magnitude_prune(m, 0.0), "--sparsity must be in"),
        (lambda m: magnitude_prune(m, 1.0), "--sparsity must be in"),
        (lambda m: prune_heads(m, 0.1), "removes 0 of 4 heads"),
        (lambda m: prune_heads(m, 1.0), "removes 4 of 4 heads"),
        (lambda m: prune_neurons(m, 0.0), "at least one neuron"),
    ],
)
def test_bad_sparsity_values(call: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        call(_gpt())


def _is_block_linear(name: str, model: torch.nn.Module) -> bool:
    return name.startswith("blocks.") and isinstance(model.get_submodule(name), torch.nn.Linear)


def _block_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for n, m in model.named_modules() if _is_block_linear(n, model)]
