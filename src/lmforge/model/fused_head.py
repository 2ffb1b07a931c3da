"""The output head and its cross-entropy in one pass, a few rows at a time.

For hidden states h (N, C), head weight W (V, C) and targets y, the mean cross-entropy is

    L = (1/n) Σ_i [ logsumexp_v(h_i·W_v) − h_i·W_{y_i} ]       (rows with y_i = −100 left out)

and its gradients are, with p_i = softmax(h_i Wᵀ) and e_{y_i} the one-hot target row,

    ∂L/∂h_i = (p_i − e_{y_i}) W / n,      ∂L/∂W = Σ_i (p_i − e_{y_i})ᵀ h_i / n.

Computing logits (N, V), then log-softmax, then its backward keeps several N × V tensors alive and
streams each through memory a few times: with GPT-2's 50,304-token vocabulary and 2,048 rows that
is ~400 MB per tensor, and on a CPU the softmax, its backward and the zero-filled gradient cost
~30% of a bf16 training step. Here each chunk of rows computes its logits, its share of the loss
and ∂L/∂h right away (in the forward pass), keeping only (p − e_y)/n in the compute dtype for one
product ∂L/∂W at the end; the backward pass only scales the stored gradients. The products run
in the autocast dtype when autocast is on (as `F.linear` would); the softmax in float32.
"""

import torch
from torch import nn

IGNORE = -100
CHUNK_ELEMENTS = 1 << 23  # logits per chunk (rows x vocabulary): 32 MB in float32


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        valid = targets != IGNORE
        count = int(valid.sum())
        scale = 1.0 / count if count else float("nan")  # 0/0, as F.cross_entropy gives
        h, w = hidden.to(dtype), weight.to(dtype)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        # (p − e_y)/n of every row, for one product at the end: ∂L/∂W = deltasᵀ h
        deltas = h.new_empty(hidden.shape[0], weight.shape[0]) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows, step = hidden.shape[0], max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, rows, step):
            chunk = slice(start, min(start + step, rows))
            logits = (h[chunk] @ w.T).float()  # (n, V)
            keep, target = valid[chunk], targets[chunk].clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            total += ((lse - picked) * keep).sum()
            if not (want_hidden or want_weight):
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(target), device=probs.device), target] -= 1.0
            delta = probs.mul_((keep * scale)[:, None]).to(dtype)  # (p − e_y)/n; 0 if ignored
            if grad_hidden is not None:
                grad_hidden[chunk] = delta @ w
            if deltas is not None:
                deltas[chunk] = delta
        grad_weight = None if deltas is None else (deltas.T @ h).to(weight.dtype)
        ctx.grads = (grad_hidden, grad_weight)
        return total * scale

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        scaled = [None if g is None else g * grad_loss for g in (grad_hidden, grad_weight)]
        return scaled[0], scaled[1], None, None


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden · headᵀ) against targets (IGNORE = −100 skipped),
    chunked and fused as the module docstring says. hidden (..., C), targets (...)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(flat, head.weight, targets.reshape(-1), _compute_dtype(hidden))
