"""A classifier fine-tune's steps come from its epochs: warmup is a share of all of them."""

import pytest

from lmforge.config import FinetuneConfig, RunConfig, TrainConfig
from lmforge.errors import ConfigError
from lmforge.jobs.classify import epoch_schedule


def _cfg(warmup_fraction: float, cap: int = 0) -> RunConfig:
    return RunConfig(
        train=TrainConfig(objective="classify", best_metric="val_accuracy"),
        finetune=FinetuneConfig(epochs=3.0, warmup_fraction=warmup_fraction, max_steps=cap),
    )


@pytest.mark.parametrize(
    ("fraction", "max_steps", "per_epoch", "warmup"),
    [(0.1, 300, 100, 30), (0.1, 33, 11, 3), (0.25, 40, 10, 10), (0.0, 12, 4, 0)],
)
def test_warmup_is_the_fraction_of_every_step_and_each_epoch_evaluates(
    fraction: float, max_steps: int, per_epoch: int, warmup: int
) -> None:
    train = epoch_schedule(_cfg(fraction), max_steps, per_epoch, valid_batches=7).train
    assert train.max_steps == max_steps
    assert train.warmup_steps == warmup  # of all max_steps, not of one epoch
    assert (train.eval_interval, train.checkpoint_interval) == (per_epoch, per_epoch)
    assert train.eval_batches == 7


def test_the_rest_of_the_config_is_kept() -> None:
    cfg = _cfg(0.1)
    scheduled = epoch_schedule(cfg, 50, 10, valid_batches=2)
    assert (scheduled.model, scheduled.finetune, scheduled.lora) == (
        cfg.model,
        cfg.finetune,
        cfg.lora,
    )
    assert (scheduled.train.lr, scheduled.train.schedule) == (cfg.train.lr, cfg.train.schedule)


@pytest.mark.parametrize(
    ("cap", "steps", "warmup", "interval"),
    [(120, 120, 12, 100), (50, 50, 5, 50), (300, 300, 30, 100), (1000, 300, 30, 100)],
)
def test_finetune_max_steps_caps_the_schedule_and_its_warmup(
    cap: int, steps: int, warmup: int, interval: int
) -> None:
    train = epoch_schedule(_cfg(0.1, cap), 300, 100, valid_batches=3).train
    assert train.max_steps == steps  # 3 epochs of 100 steps, or the cap when fewer
    assert train.warmup_steps == warmup  # a share of the steps actually run
    assert train.eval_interval == interval  # each epoch, or once at the end when shorter


def test_a_negative_step_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"finetune\.max_steps"):
        FinetuneConfig(max_steps=-1)
