"""The loss spike guard (train.spike_guard = k, train.spike_window = n) and the non-finite guard
under injected faults: a skipped step leaves the weights as they were, is counted and logged,
and the run goes on; the switch off lets the same spike through."""

import dataclasses
from typing import Any

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.errors import LMForgeError, TrainingDiverged
from lmforge.model import GPT
from lmforge.train.objectives import clm_loss
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer, is_loss_spike

SPIKE_STEP = 8  # 0-based step whose loss the faulty objective multiplies


def test_is_loss_spike_is_k_times_the_window_mean() -> None:
    recent = [2.0, 2.0, 4.0, 4.0]  # mean of the last 2: 4.0; of all 4: 3.0
    assert is_loss_spike(12.1, recent, factor=3.0, window=2)
    assert not is_loss_spike(11.9, recent, factor=3.0, window=2)
    assert is_loss_spike(9.1, recent, factor=3.0, window=4)
    assert not is_loss_spike(1e9, recent, factor=0.0, window=2)  # off
    assert not is_loss_spike(1e9, recent, factor=3.0, window=5)  # no baseline yet


def _batches(cfg: ModelConfig) -> Any:
    def batches(step: int, micro: int) -> Batch:
        g = step_generator(0, step, micro)
        return clm_batch(torch.randint(0, cfg.vocab_size, (2, cfg.block_size + 1), generator=g))

    return batches


def _faulty(fault: str, at: set[int]) -> Any:
    """clm_loss, but ×50 (spike) or NaN at the given 0-based steps (one micro-batch each)."""
    calls = {"n": 0}

    def objective(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        loss = clm_loss(model, batch)
        step, calls["n"] = calls["n"], calls["n"] + 1
        if step in at:
            return loss * 50.0 if fault == "spike" else loss * float("nan")
        return loss

    return objective


class Snapshots:
    """The model's weights after each step, through the trainer's save hook."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.after: dict[int, torch.Tensor] = {}

    def __call__(self, saved: dict[str, Any], is_best: bool) -> None:
        flat = torch.cat([p.detach().flatten() for p in self.model.parameters()])
        self.after[saved["state"]["step"]] = flat.clone()


def _train(
    model_cfg: ModelConfig, train_cfg: TrainConfig, objective: Any
) -> tuple[Trainer, Snapshots]:
    torch.manual_seed(0)
    model = GPT(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr)
    snapshots = Snapshots(model)
    tracker = Tracker(None, train_cfg.max_steps, 0, progress=False)
    trainer = Trainer(
        model,
        optimizer,
        _batches(model_cfg),
        train_cfg,
        objective,
        save=snapshots,
        tracker=tracker,
    )
    trainer.fit()
    return trainer, snapshots


def _cfg(tiny_train_cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(
        tiny_train_cfg, max_steps=12, checkpoint_interval=1, eval_interval=100, **changes
    )


def test_a_spike_is_skipped_with_the_guard_and_applied_without_it(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig, capsys: pytest.CaptureFixture
) -> None:
    guarded_cfg = _cfg(tiny_train_cfg, spike_guard=3.0, spike_window=4)
    guarded, seen = _train(tiny_model_cfg, guarded_cfg, _faulty("spike", {SPIKE_STEP}))
    assert guarded.state.skipped_steps == 1
    torch.testing.assert_close(seen.after[SPIKE_STEP + 1], seen.after[SPIKE_STEP], rtol=0, atol=0)
    assert not torch.equal(seen.after[SPIKE_STEP + 2], seen.after[SPIKE_STEP + 1])  # goes on
    assert f"step {SPIKE_STEP + 1}: loss spike" in capsys.readouterr().err
    assert len(guarded.state.recent_losses) == 4  # the window travels in the checkpoint
    assert guarded.state_dict()["state"]["recent_losses"] == guarded.state.recent_losses

    unguarded, seen_off = _train(
        tiny_model_cfg, _cfg(tiny_train_cfg), _faulty("spike", {SPIKE_STEP})
    )
    assert unguarded.state.skipped_steps == 0
    assert not torch.equal(seen_off.after[SPIKE_STEP + 1], seen_off.after[SPIKE_STEP])
    assert unguarded.state.recent_losses == []


def test_a_nan_batch_mid_run_is_skipped_logged_and_the_run_recovers(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig, capsys: pytest.CaptureFixture
) -> None:
    trainer, seen = _train(tiny_model_cfg, _cfg(tiny_train_cfg), _faulty("nan", {5}))
    assert trainer.state.skipped_steps == 1
    assert trainer.state.step == 12
    torch.testing.assert_close(seen.after[6], seen.after[5], rtol=0, atol=0)
    assert bool(torch.isfinite(seen.after[12]).all())
    assert "step 6: non-finite loss" in capsys.readouterr().err


def test_spikes_in_a_row_stop_the_run_like_non_finite_steps(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = _cfg(tiny_train_cfg, spike_guard=3.0, spike_window=2, max_bad_steps=2)
    with pytest.raises(TrainingDiverged, match="loss spike"):
        _train(tiny_model_cfg, cfg, _faulty("spike", {6, 7, 8, 9}))


@pytest.mark.parametrize(("key", "value"), [("spike_guard", 0.5), ("spike_window", 0)])
def test_bad_spike_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(LMForgeError, match=f"train.{key}"):
        TrainConfig(**{key: value})
