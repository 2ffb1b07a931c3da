"""Task heads over a pretrained body: sequence classification for BERT and GPT alike."""

import torch
from torch import nn

from lmforge.errors import LMForgeError
from lmforge.model.bert import BERT
from lmforge.model.gpt import GPT

POOLINGS = ("auto", "cls", "mean", "last")


def sequence_summary(
    body: nn.Module,
    idx: torch.Tensor,
    token_types: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    pooling: str = "auto",
) -> torch.Tensor:
    """One vector per sequence (B, C) from the body's final hidden states h (B, T, C).

    cls: a BERT's pooled [CLS], tanh(W_p · h_[CLS] + b_p); last: h at the last real token (for a
    GPT the only position that has seen the whole sequence); mean: Σ_t m_t · h_t / Σ_t m_t over
    the real tokens (m = attention_mask); auto: cls for a BERT, last for a GPT.
    """
    if pooling not in POOLINGS:
        raise LMForgeError(f"unknown pooling {pooling!r}; use {', '.join(POOLINGS)}")
    bert = isinstance(body, BERT)
    if pooling == "auto":
        pooling = "cls" if bert else "last"
    if pooling == "cls" and not bert:
        raise LMForgeError(
            "finetune.pooling=cls needs a BERT: a GPT's first token has seen only itself; "
            "use last or mean"
        )
    hidden = (
        body.encode(idx, token_types, attention_mask)
        if bert
        else body.encode(idx, attention_mask=attention_mask)
    )  # (B, T, C)
    if pooling == "cls":
        return body.pool(hidden)
    if attention_mask is None:
        return hidden.mean(1) if pooling == "mean" else hidden[:, -1]
    if pooling == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    # the first position where the count of real tokens peaks: the last real token, with
    # right padding (index = mask.sum(1) - 1) or left
    last = attention_mask.long().cumsum(1).argmax(1)  # (B,)
    return hidden[torch.arange(idx.shape[0], device=idx.device), last]


class SequenceClassifier(nn.Module):
    """logits = W · dropout(summary(x)) + b, with one summary vector per sequence.

    The summary is `sequence_summary` with `pooling`: by default the body's pooled [CLS] vector,
    tanh(W_p · h_[CLS] + b_p), for a BERT, and the final hidden state of the last real token for
    a GPT (the only position that has seen the whole sequence). attention_mask (B, T) is True on
    real tokens; batches are right-padded (a GPT also takes left padding). A GPT has no token
    types, so they are ignored for it.
    """

    def __init__(
        self, body: nn.Module, n_classes: int, dropout: float = 0.1, pooling: str = "auto"
    ) -> None:
        super().__init__()
        if not isinstance(body, BERT | GPT):
            raise LMForgeError(
                f"cannot classify with a {type(body).__name__} body; use a BERT or a GPT"
            )
        if n_classes < 2:
            raise LMForgeError(f"classification needs at least 2 classes, got {n_classes}")
        self.body = body
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(body.cfg.n_embd, n_classes)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=body.cfg.init_std)
        nn.init.zeros_(self.classifier.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        """The body's Transformer blocks (FSDP shards per block)."""
        return self.body.blocks

    def summary(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The sequence vectors (B, C) the classifier reads."""
        return sequence_summary(self.body, idx, token_types, attention_mask, self.pooling)

    def forward(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class logits (B, n_classes) for token ids idx (B, T)."""
        return self.classifier(self.drop(self.summary(idx, token_types, attention_mask)))

    def num_params(self) -> int:
        """Parameter count of body and head (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token of the body (the head adds 6·C·K per sequence, negligible)."""
        return self.body.flops_per_token()


class MultiTaskClassifier(nn.Module):
    """One shared body and one classifier layer per task (heads.<task>): logits for the task
    a batch belongs to."""

    def __init__(
        self,
        body: nn.Module,
        classes: dict[str, int],
        dropout: float = 0.1,
        pooling: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(body, BERT | GPT):
            raise LMForgeError(f"cannot classify with a {type(body).__name__} body")
        self.body = body
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {task: nn.Linear(body.cfg.n_embd, k) for task, k in classes.items()}
        )
        for head in self.heads.values():
            nn.init.normal_(head.weight, mean=0.0, std=body.cfg.init_std)
            nn.init.zeros_(head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.body.blocks

    def forward(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        task: str = "",
    ) -> torch.Tensor:
        if task not in self.heads:
            raise LMForgeError(f"unknown task {task!r}; this model has {sorted(self.heads)}")
        summary = sequence_summary(self.body, idx, token_types, attention_mask, self.pooling)
        return self.heads[task](self.drop(summary))

    def num_params(self) -> int:
        """Parameter count of the body and every head."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token of the body (each head is negligible)."""
        return self.body.flops_per_token()


class TaskHead(nn.Module):
    """One task of a MultiTaskClassifier as a plain classifier: (idx, types, mask) -> logits."""

    def __init__(self, model: MultiTaskClassifier, task: str) -> None:
        super().__init__()
        if task not in model.heads:
            raise LMForgeError(f"unknown task {task!r}; this model has {sorted(model.heads)}")
        self.model, self.task = model, task

    def forward(
        self,
        idx: torch.Tensor,
        token_types: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(idx, token_types, attention_mask, task=self.task)
