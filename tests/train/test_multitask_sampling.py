"""Multi-task sampling: task i is drawn with p_i = n_i^(1/T) / Σ_j n_j^(1/T), both as computed
and as the seeded sampler's frequencies over many steps."""

import math

import pytest
import torch

from lmforge.data.classify import EncodedExamples, Task, task_probabilities
from lmforge.data.sources import task_sampler

SIZES = {"small": 100, "medium": 400, "large": 1600}
# n^(1/T) by hand: T = 0.5 squares the sizes (1 : 16 : 256), T = 2 takes roots (10 : 20 : 40).
EXPECTED = {
    0.5: [1 / 273, 16 / 273, 256 / 273],
    1.0: [1 / 21, 4 / 21, 16 / 21],
    2.0: [1 / 7, 2 / 7, 4 / 7],
}


def _examples(n: int) -> EncodedExamples:
    return EncodedExamples(
        ids=[[1, 2, 3]] * n,
        token_types=[[0, 0, 0]] * n,
        labels=[i % 2 for i in range(n)],
        pad_id=0,
        max_length=8,
        truncated=0,
    )


def _tasks() -> list[Task]:
    return [Task(name, ["a", "b"], _examples(n), _examples(4)) for name, n in SIZES.items()]


@pytest.mark.parametrize("temperature", sorted(EXPECTED))
def test_task_probabilities_are_sizes_to_the_power_one_over_t(temperature: float) -> None:
    probs = task_probabilities(list(SIZES.values()), temperature)
    torch.testing.assert_close(probs, torch.tensor(EXPECTED[temperature], dtype=torch.float64))
    by_formula = [n ** (1 / temperature) for n in SIZES.values()]
    for p, w in zip(probs.tolist(), by_formula, strict=True):
        assert p == pytest.approx(w / sum(by_formula), rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_the_sampler_draws_tasks_with_those_frequencies(temperature: float) -> None:
    """Over N = 3000 seeded steps each task's frequency lies within 4 binomial standard
    deviations, 4·sqrt(p(1 − p)/N) (at most 0.037), of p_i."""
    draws = 3000
    sample = task_sampler(_tasks(), batch_size=2, seed=7, temperature=temperature)
    counts = dict.fromkeys(SIZES, 0)
    for step in range(draws):
        counts[sample(step, 0).task] += 1
    for name, p in zip(SIZES, EXPECTED[temperature], strict=True):
        tolerance = 4 * math.sqrt(p * (1 - p) / draws)
        assert abs(counts[name] / draws - p) <= tolerance, (name, counts)
