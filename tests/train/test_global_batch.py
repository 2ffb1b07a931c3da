"""The global batch under DDP, without starting processes: each rank's rows, and a resume on
another number of processes that keeps the global batch (the arithmetic test_ddp relies on)."""

import dataclasses

import pytest
import torch

from lmforge.config import RunConfig, TrainConfig
from lmforge.data.batches import Batch
from lmforge.errors import ConfigError
from lmforge.jobs.session import same_global_batch
from lmforge.train.distributed import DistContext, rank_rows


def _batch(rows: int) -> Batch:
    inputs = torch.arange(rows * 3).view(rows, 3)
    return Batch(inputs=inputs, targets=inputs + 1, labels=torch.arange(rows), task="t")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_take_disjoint_equal_slices_that_rebuild_the_global_batch(world: int) -> None:
    whole = _batch(8)
    parts = [rank_rows(whole, DistContext(rank, world, rank)) for rank in range(world)]
    assert all(p.inputs.shape == (8 // world, 3) for p in parts)
    assert torch.equal(torch.cat([p.inputs for p in parts]), whole.inputs)
    assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert all(p.task == "t" and p.token_types is None for p in parts)


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split over 3"):
        rank_rows(_batch(8), DistContext(0, 3, 0))


def _cfg(batch_size: int) -> RunConfig:
    return RunConfig(train=TrainConfig(batch_size=batch_size))


@pytest.mark.parametrize(
    ("saved_world", "saved_batch", "world", "expected"),
    [(2, 4, 1, 8), (2, 4, 4, 2), (1, 8, 2, 4), (4, 3, 2, 6), (2, 4, 2, 4)],
)
def test_resuming_on_another_world_size_keeps_the_global_batch(
    saved_world: int, saved_batch: int, world: int, expected: int
) -> None:
    saved = {"dist": {"world_size": saved_world, "batch_size": saved_batch}}
    resumed = same_global_batch(_cfg(saved_batch), saved, world)
    assert resumed.train.batch_size == expected
    assert resumed.train.batch_size * world == saved_world * saved_batch
    assert dataclasses.replace(resumed.train, batch_size=saved_batch) == _cfg(saved_batch).train


def test_an_explicit_new_batch_size_or_an_old_checkpoint_is_left_alone() -> None:
    saved = {"dist": {"world_size": 2, "batch_size": 4}}
    assert same_global_batch(_cfg(6), saved, 1).train.batch_size == 6  # the user changed it
    assert same_global_batch(_cfg(4), {}, 3).train.batch_size == 4  # no layout recorded


def test_a_global_batch_that_cannot_be_split_on_resume_is_a_config_error() -> None:
    saved = {"dist": {"world_size": 2, "batch_size": 3}}
    with pytest.raises(ConfigError, match="does not split over 4 processes"):
        same_global_batch(_cfg(3), saved, 4)
