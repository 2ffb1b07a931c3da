"""The optimizer state round trip when some parameters never had a gradient (a BERT's NSP head
under objective mlm): AdamW keeps no state for them, and resuming must still work, exactly."""

from pathlib import Path

import torch
from torch import nn

from lmforge.train.optimizer_state import load_optimizer_state, save_optimizer_state


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 2)  # like nsp_head when the objective is mlm


def _step(model: TwoHeads, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model.used(x).square().mean().backward()
    optimizer.step()


def test_a_parameter_without_state_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for seed in range(2):
        _step(model, optimizer, seed)
    assert model.unused.weight not in optimizer.state  # the case under test
    save_optimizer_state(model, optimizer, tmp_path / "opt")
    resumed = TwoHeads()
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=0.1)
    load_optimizer_state(resumed, resumed_optimizer, tmp_path / "opt")
    for seed in (2, 3):
        _step(model, optimizer, seed)
        _step(resumed, resumed_optimizer, seed)
    for name, tensor in model.state_dict().items():
        assert resumed.state_dict()[name].equal(tensor), name
