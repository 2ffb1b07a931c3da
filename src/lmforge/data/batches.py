"""Batches and the pure builders that make them; every random choice takes a torch.Generator."""

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100  # a target no loss counts (prompt, padding, unmasked); PyTorch's default


@dataclass(frozen=True, slots=True)
class Batch:
    """Model inputs and the targets the loss compares against (IGNORE_INDEX = not scored).

    The optional fields serve the encoder and fine-tuning objectives; a causal-LM batch leaves
    them None.
    """

    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) next-token ids (CLM) or original ids at masked positions (MLM)
    token_types: torch.Tensor | None = None  # (B, T) segment ids: 0 for sentence A, 1 for B
    attention_mask: torch.Tensor | None = None  # (B, T) bool, True on real (non-padding) tokens
    labels: torch.Tensor | None = None  # (B,) one label per sequence: NSP or class id
    segments: torch.Tensor | None = None  # (B, T) packed example number (1, 2, ...), 0 = padding
    task: str | None = None  # multi-task fine-tuning: which task's head the batch trains

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        moved = {}
        for f in self.__slots__:
            t = getattr(self, f)
            moved[f] = t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t
        return Batch(**moved)

    @property
    def num_tokens(self) -> int:
        """Tokens in the batch, padding excluded."""
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        if self.segments is not None:
            return int((self.segments > 0).sum())
        return self.inputs.numel()


def clm_batch(windows: torch.Tensor) -> Batch:
    """Causal-LM batch from windows (B, T+1): inputs are tokens 0..T-1, targets tokens 1..T."""
    return Batch(inputs=windows[:, :-1], targets=windows[:, 1:])


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator determined by (seed, *keys) alone, e.g. (seed, step, micro, rank).

    Batches drawn from it depend on nothing but the step, so a resumed run sees exactly the
    batches an uninterrupted one would, and each rank draws its own.
    """
    # the key count is mixed in: SeedSequence ignores trailing zeros, so (s, 0) would equal (s,)
    state = np.random.SeedSequence([seed, len(keys), *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
