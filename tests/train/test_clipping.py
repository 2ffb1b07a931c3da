"""Gradient clipping: the global norm is cut to train.grad_clip when above it, never below."""

import dataclasses
from typing import Any

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.model import GPT
from lmforge.train.objectives import clm_loss
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer


class Recorder(torch.optim.SGD):
    """Records the gradients it is asked to apply (after clipping) and changes nothing."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, lr=0.0)
        self.grads: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])


def _source(cfg: ModelConfig) -> Any:
    def batches(step: int, micro: int) -> Batch:
        g = step_generator(0, 0, step, micro)
        return clm_batch(torch.randint(0, cfg.vocab_size, (2, cfg.block_size + 1), generator=g))

    return batches


def _first_step(
    model_cfg: ModelConfig, train_cfg: TrainConfig, grad_clip: float
) -> tuple[list[torch.Tensor], float]:
    """The gradients the optimizer got at step 1, and the grad_norm the trainer logged."""
    torch.manual_seed(0)
    model = GPT(model_cfg)
    cfg = dataclasses.replace(train_cfg, grad_clip=grad_clip, max_steps=1, warmup_steps=0)
    recorder = Recorder(model.parameters())
    tracker = Tracker(None, 1, 0, progress=False)
    logged: list[dict[str, Any]] = []
    tracker.log = logged.append  # type: ignore[method-assign]
    Trainer(model, recorder, _source(model_cfg), cfg, clm_loss, tracker=tracker).fit()
    norms = [r["grad_norm"] for r in logged if "grad_norm" in r]
    return recorder.grads[0], norms[0]


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_a_norm_above_the_threshold_is_cut_to_it_keeping_the_direction(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    raw, raw_norm = _first_step(tiny_model_cfg, tiny_train_cfg, grad_clip=0.0)  # 0 disables
    assert raw_norm == pytest.approx(_norm(raw), rel=1e-5)
    threshold = raw_norm / 4
    clipped, logged = _first_step(tiny_model_cfg, tiny_train_cfg, grad_clip=threshold)
    assert logged == pytest.approx(raw_norm, rel=1e-5)  # the log shows the norm before clipping
    assert _norm(clipped) == pytest.approx(threshold, rel=1e-4)
    for c, r in zip(clipped, raw, strict=True):
        torch.testing.assert_close(c, r * (threshold / raw_norm), atol=1e-7, rtol=1e-4)


def test_a_norm_below_the_threshold_is_left_alone(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    raw, raw_norm = _first_step(tiny_model_cfg, tiny_train_cfg, grad_clip=0.0)
    kept, _ = _first_step(tiny_model_cfg, tiny_train_cfg, grad_clip=raw_norm * 4)
    for k, r in zip(kept, raw, strict=True):
        assert torch.equal(k, r)
