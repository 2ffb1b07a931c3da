"""A classifier fine-tune's steps come from its epochs: warmup is a share of all of them."""

import pytest

from lmforge.config import FinetuneConfig, RunConfig, TrainConfig
from lmforge.jobs.finetune import epoch_schedule


def _cfg(warmup_fraction: float) -> RunConfig:
    return RunConfig(
        train=TrainConfig(objective="classify", best_metric="val_accuracy"),
        finetune=FinetuneConfig(epochs=3.0, warmup_fraction=warmup_fraction),
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
