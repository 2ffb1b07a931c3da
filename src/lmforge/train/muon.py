"""Muon: momentum orthogonalised by Newton-Schulz, for the hidden matrices of a Transformer.

For a weight matrix W (A x B) with gradient G, each step (Jordan et al. 2024):

    M ← μ·M + (1 − μ)·G                      momentum, an exponential average
    U ← (1 − μ)·G + μ·M                      Nesterov's look-ahead
    O ← NS₅(U / ‖U‖_F) ≈ U·(UᵀU)^(-1/2)      five quintic Newton-Schulz steps: X ← aX + (bS + cS²)X,
                                              S = XXᵀ, (a, b, c) = (3.4445, −4.7750, 2.0315)
    W ← W·(1 − lr·λ) − lr·√max(1, A/B)·O     decoupled weight decay, then the orthogonal step

Every singular value of the update is pushed towards 1, so no direction of the matrix dominates
the step. The arithmetic is that of `torch.optim.Muon` (tests check the two agree); the difference
is the precision of the Newton-Schulz products: PyTorch always runs them in bfloat16, which CPUs
without bf16 units emulate about 100x slower than float32, so here the caller picks the dtype
(the run's measured precision).

Embeddings, the output head, norms and biases are not matrices of the hidden layers: they keep
AdamW (`MuonWithAdamW`), which is also how the public speedrun uses Muon.
"""

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    update: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """NS₅(U): the update with its singular values pushed towards 1 (into roughly [0.7, 1.2]),
    computed on the wide orientation (rows <= columns) in `dtype`. U is one matrix (A, B) or a
    stack of equally shaped ones (N, A, B), each orthogonalised on its own (batched products:
    one call for every layer's matrix of a kind)."""
    a, b, c = NEWTON_SCHULZ
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral <= Frobenius <= 1
    for _ in range(steps):
        gram = x @ x.mT
        if x.dim() == 2:
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (see the module docstring for the update rule)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates matrices only; got a {p.dim()}-D parameter")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, mu, decay = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[torch.Size, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():  # every layer's matrix of one kind at once
                updates = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buffer = state["momentum_buffer"]
                    buffer.lerp_(p.grad, 1 - mu)
                    updates.append(p.grad.lerp(buffer, mu))
                stacked = updates[0] if len(updates) == 1 else torch.stack(updates)
                orthogonal = orthogonalize(stacked, dtype=self.ns_dtype)
                scale = max(1.0, params[0].size(0) / params[0].size(1)) ** 0.5
                for p, update in zip(params, orthogonal.view(-1, *params[0].shape), strict=True):
                    p.mul_(1 - lr * decay)
                    p.add_(update.to(p.dtype), alpha=-lr * scale)


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's share: the 2-D weights inside the Transformer blocks (attention and MLP)."""
    return param.dim() == 2 and ("blocks." in name) and "emb" not in name


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices, AdamW for everything else, seen as one optimizer.

    The trainer, the learning-rate schedule and the sharded checkpoint (DCP) see one list of
    param_groups and one state keyed by parameter: the two inner optimizers share them. Each
    group's `lr_ratio` scales the schedule's lr (Muon's groups: muon_lr / lr).
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: Muon) -> None:
        params = [p for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.adamw, self.muon = adamw, muon
        self.param_groups = adamw.param_groups + muon.param_groups
        for key, value in adamw.defaults.items():
            self.defaults.setdefault(key, value)
        self._share_state()

    def _share_state(self) -> None:
        """Point both inner optimizers at this optimizer's groups and state."""
        split = len(self.adamw.param_groups)
        self.adamw.param_groups = self.param_groups[:split]
        self.muon.param_groups = self.param_groups[split:]
        self.adamw.state = self.muon.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        self.adamw.step()
        self.muon.step()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and self.param_groups
        self._share_state()


def split_for_muon(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(hidden matrices for Muon, the rest for AdamW), trainable parameters only."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return (
        [p for n, p in named if is_hidden_matrix(n, p)],
        [p for n, p in named if not is_hidden_matrix(n, p)],
    )
