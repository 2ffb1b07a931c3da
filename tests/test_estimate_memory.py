"""lmforge estimate's memory model, term by term: what FSDP shards and what it gathers."""

import pytest

from lmforge.config import load_config
from lmforge.jobs.estimate import estimate

SETS = ["model.vocab_size=1000", "model.n_layer=4", "model.n_embd=64", "model.n_head=4"]


@pytest.mark.parametrize("world", [2, 4, 8])
def test_fsdp_weights_are_a_shard_plus_one_gathered_block(world: int) -> None:
    fsdp = estimate(load_config(None, [*SETS, "dist.strategy=fsdp"]), world_size=world)
    p, memory = fsdp["parameters"], fsdp["memory_per_device"]
    assert memory["weights"] == pytest.approx(4 * p / world + 4 * p / 4)  # 4 layers
    assert memory["gradients"] == pytest.approx(4 * p / world)
    assert memory["optimizer"] == pytest.approx(8 * p / world)
    assert fsdp["total_per_device"] == pytest.approx(sum(memory.values()))


@pytest.mark.parametrize("strategy", ["none", "ddp"])
def test_replicated_strategies_hold_everything_whole(strategy: str) -> None:
    world = 1 if strategy == "none" else 4
    result = estimate(load_config(None, [*SETS, f"dist.strategy={strategy}"]), world_size=world)
    p, memory = result["parameters"], result["memory_per_device"]
    assert (memory["weights"], memory["gradients"], memory["optimizer"]) == (4 * p, 4 * p, 8 * p)


def test_one_fsdp_process_gathers_nothing() -> None:
    result = estimate(load_config(None, [*SETS, "dist.strategy=fsdp"]), world_size=1)
    assert result["memory_per_device"]["weights"] == 4 * result["parameters"]
