"""The stop decision under torchrun is the all-reduced flag alone: a signal whose handler runs
as the all-reduce returns must wait for the next step boundary, or this rank would checkpoint
(a barrier) while the others go on training (the next step's gradient all-reduce): a hang."""

import signal

import pytest
import torch

from lmforge.jobs import run_control
from lmforge.jobs.run_control import StopSignals


class FakeTwoRanks:
    """torch.distributed for two ranks; `late_signal` lands on this rank during the all-reduce,
    `other_rank` is the flag the other rank contributes."""

    def __init__(self, signals: StopSignals, late_signal: int = 0, other_rank: int = 0) -> None:
        self.signals, self.late_signal, self.other_rank = signals, late_signal, other_rank
        self.ReduceOp = torch.distributed.ReduceOp

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def get_backend(self) -> str:
        return "gloo"

    def all_reduce(self, flag: torch.Tensor, op: object) -> None:
        flag.copy_(torch.maximum(flag, torch.tensor([self.other_rank])))
        if self.late_signal:  # the handler runs when the blocking call returns
            self.signals._handle(self.late_signal, None)
            self.late_signal = 0


def test_a_signal_landing_in_the_all_reduce_stops_at_the_next_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signals = StopSignals(announce=False)
    monkeypatch.setattr(run_control, "dist", FakeTwoRanks(signals, late_signal=signal.SIGTERM))
    assert signals.agreed() is False  # the other rank saw no signal in this reduction
    assert signals.signum == signal.SIGTERM  # but it is kept for the next one
    assert signals.agreed() is True


def test_another_ranks_signal_stops_this_rank_too(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = StopSignals(announce=False)
    monkeypatch.setattr(run_control, "dist", FakeTwoRanks(signals, other_rank=signal.SIGINT))
    assert signals.agreed() is True
    assert signals.signum == signal.SIGINT


def test_no_signal_anywhere_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    signals = StopSignals(announce=False)
    monkeypatch.setattr(run_control, "dist", FakeTwoRanks(signals))
    assert signals.agreed() is False
    assert signals.signum is None
