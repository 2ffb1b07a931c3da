"""The warmup + cosine schedule and the AdamW decay / no-decay parameter groups."""

import dataclasses
import itertools
import math

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.errors import ConfigError
from lmforge.model import GPT
from lmforge.train.optim import build_optimizer, lr_at, param_groups


def _cfg(**overrides: float) -> TrainConfig:
    base = {"max_steps": 100, "warmup_steps": 10, "lr": 1e-3, "min_lr": 1e-4}
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- lr_at


def test_lr_warms_up_linearly_from_step_zero() -> None:
    cfg = _cfg()
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert 0 < lr_at(0, cfg) < cfg.lr  # the first step neither wastes a batch nor jumps to peak
    warmup = [lr_at(s, cfg) for s in range(cfg.warmup_steps)]
    assert all(b > a for a, b in itertools.pairwise(warmup))
    steps = torch.tensor([b - a for a, b in itertools.pairwise(warmup)])
    torch.testing.assert_close(steps, torch.full_like(steps, cfg.lr / cfg.warmup_steps))


def test_lr_reaches_peak_at_the_end_of_warmup() -> None:
    cfg = _cfg()
    assert lr_at(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert lr_at(cfg.warmup_steps, cfg) == pytest.approx(cfg.lr)
    assert max(lr_at(s, cfg) for s in range(cfg.max_steps + 5)) == pytest.approx(cfg.lr)


def test_lr_decays_to_min_lr_at_the_end() -> None:
    cfg = _cfg()
    assert lr_at(cfg.max_steps, cfg) == pytest.approx(cfg.min_lr)
    assert lr_at(cfg.max_steps + 50, cfg) == pytest.approx(cfg.min_lr)
    assert lr_at(cfg.max_steps - 1, cfg) == pytest.approx(cfg.min_lr, rel=0.01)
    middle = cfg.warmup_steps + (cfg.max_steps - cfg.warmup_steps) // 2
    assert lr_at(middle, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)  # cosine midpoint


@pytest.mark.parametrize("warmup", [0, 1, 10, 100])
def test_lr_decreases_monotonically_after_warmup(warmup: int) -> None:
    cfg = _cfg(warmup_steps=warmup)
    lrs = [lr_at(s, cfg) for s in range(warmup, cfg.max_steps + 1)]
    assert all(b <= a for a, b in itertools.pairwise(lrs))
    assert all(cfg.min_lr - 1e-12 <= lr <= cfg.lr + 1e-12 for lr in lrs)
    if warmup == 0:
        assert lr_at(0, cfg) == pytest.approx(cfg.lr)
    if warmup < cfg.max_steps:
        assert lrs[-1] < lrs[0]


def test_lr_follows_the_cosine_formula() -> None:
    cfg = _cfg()
    for step in (10, 25, 60, 99):
        progress = (step - 10) / 90
        expected = 1e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (1e-3 - 1e-4)
        assert lr_at(step, cfg) == pytest.approx(expected)


# ---------------------------------------------------------------- param_groups


def _names(model: torch.nn.Module, params: list[torch.Tensor]) -> set[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


@pytest.mark.parametrize("tie_weights", [True, False])
def test_param_groups_split_matrices_from_biases_and_norms(tie_weights: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97, tie_weights=tie_weights
    )
    model = GPT(cfg)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    decay_names, no_decay_names = _names(model, decay["params"]), _names(model, no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    for name in ("tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.proj.weight"):
        assert name in decay_names
    for name in ("blocks.0.attn.qkv.bias", "blocks.0.ln_1.weight", "ln_f.bias", "ln_f.weight"):
        assert name in no_decay_names
    # every parameter exactly once; a tied head is not listed a second time
    listed = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters()}
    assert ("lm_head.weight" in decay_names) is not tie_weights
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == model.num_params()


def test_param_groups_skip_frozen_parameters() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    model.tok_emb.weight.requires_grad_(False)
    model.ln_f.bias.requires_grad_(False)
    listed = {id(p) for group in param_groups(model, 0.1) for p in group["params"]}
    assert id(model.tok_emb.weight) not in listed
    assert id(model.ln_f.bias) not in listed
    assert id(model.ln_f.weight) in listed


def test_build_optimizer_uses_the_config() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    cfg = dataclasses.replace(_cfg(), weight_decay=0.05, beta1=0.8, beta2=0.95, eps=1e-6)
    optimizer = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in optimizer.param_groups)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction() -> None:
    """Warmup-stable-decay: warmup 10, max 110, decay over the last 20% of the 100 steps after
    warmup: lr held at the peak through step 89, min_lr at 110, halfway at step 100."""
    cfg = TrainConfig(
        max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4, schedule="wsd", decay_fraction=0.2
    )
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert all(lr_at(s, cfg) == pytest.approx(1e-3) for s in range(10, 91))
    assert lr_at(100, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(109, cfg) == pytest.approx(1e-4 + 0.9e-3 * 0.05)
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    steps = [lr_at(s, cfg) for s in range(90, 111)]
    assert all(a >= b for a, b in itertools.pairwise(steps))  # monotone decay
    cosine = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(60, cosine) < lr_at(60, cfg)  # the switch does something: cosine decays early
    with pytest.raises(ConfigError, match="decay_fraction"):
        TrainConfig(schedule="wsd", decay_fraction=0.0)
