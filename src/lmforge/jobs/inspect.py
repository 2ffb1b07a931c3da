"""`lmforge inspect attention` and `lmforge inspect tokens`: what a run's model does with one
prompt, as numbers and pictures: every head's attention probabilities, and each token's piece,
id and loss."""

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LMForgeError
from lmforge.jobs.generate import load_for_generation
from lmforge.model import BERT
from lmforge.model.attention_maps import attention_maps
from lmforge.plots import plot_attention, plot_token_losses
from lmforge.tokenizer import Tokenizer

NEXT_TOKEN = "next-token"  # GPT: −ln P(token_i | tokens before it)
PSEUDO_LOG_LIKELIHOOD = "pseudo-log-likelihood"  # BERT: −ln P(token_i | all others), i masked


def check_plot_target(plot: Path | None, overwrite: bool) -> None:
    """Refuse to replace an existing --plot file unless the user said --overwrite."""
    if plot is None:
        return
    if plot.exists() and not overwrite:
        raise LMForgeError(f"{plot} exists; choose another --plot or pass --overwrite")
    if plot.is_dir():
        raise LMForgeError(f"--plot {plot} is a directory; give a file name such as attn.png")
    plot.parent.mkdir(parents=True, exist_ok=True)


def load_for_reading(run_dir: Path, which: str) -> tuple[nn.Module, Tokenizer]:
    """A run's language model (full, LoRA or int8, as load_run builds it) in eval mode, its
    floating-point weights in float32, on the CPU; and its tokenizer."""
    model, tokenizer = load_for_generation(run_dir, which, "float32")
    return model.cpu().eval(), tokenizer


def encode_prompt(model: nn.Module, tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids (a BERT's between [CLS] and [SEP], as it was trained); an empty
    prompt or one longer than the model's context is refused."""
    if not prompt.strip():
        raise LMForgeError('--prompt is empty; give the text to inspect, e.g. --prompt "The cat"')
    ids = tokenizer.encode(prompt, add_special_tokens=isinstance(model, BERT))
    if all(i in tokenizer.special_ids for i in ids):
        raise LMForgeError(f"--prompt {prompt!r} has no tokens this tokenizer knows; give text")
    context = model.cfg.block_size
    if len(ids) > context:
        raise LMForgeError(
            f"--prompt is {len(ids)} tokens but the model reads at most {context} "
            "(model.block_size); shorten the prompt"
        )
    return ids


def token_pieces(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """The text of each token, decoded alone (a byte-level piece of a split character shows as
    the replacement character)."""
    return [tokenizer.decode([i]) for i in ids]


def select(index: int | None, count: int, flag: str, what: str) -> list[int]:
    """[index], or every index 0..count-1 when it is None; an index out of range is refused."""
    if index is None:
        return list(range(count))
    if not 0 <= index < count:
        raise LMForgeError(
            f"{flag} {index} is out of range: this model has {count} {what} "
            f"(numbered 0 to {count - 1})"
        )
    return [index]


@torch.no_grad()
def next_token_nats(model: nn.Module, ids: list[int]) -> list[float | None]:
    """A GPT's loss of each token in nats: −ln P(t_i | t_<i) = −log_softmax(logits_{i−1})[t_i]
    for i ≥ 1; None for token 0, which nothing precedes."""
    idx = torch.tensor([ids])
    logits = model(idx)[0].float()  # (T, V)
    nats = F.cross_entropy(logits[:-1], idx[0, 1:], reduction="none")
    return [None, *nats.tolist()]


@torch.no_grad()
def pseudo_log_likelihood_nats(
    model: BERT, ids: list[int], mask_id: int, special: frozenset[int]
) -> list[float | None]:
    """A BERT's pseudo-log-likelihood loss of each token in nats (Salazar et al. 2020):
    −ln P(t_i | t_≠i), read at position i of a copy of the sequence whose token i is [MASK].
    Every scored position is masked in its own row of one batch; special tokens ([CLS],
    [SEP]) get None."""
    scored = [i for i, token in enumerate(ids) if token not in special]
    rows = torch.tensor([ids]).repeat(len(scored), 1)  # (P, T)
    at, row = torch.tensor(scored), torch.arange(len(scored))
    rows[row, at] = mask_id
    hidden = model.encode(rows)[row, at]  # (P, C): each row's masked position
    logits = model.mlm_logits(hidden).float()  # (P, V)
    nats = F.cross_entropy(logits, rows.new_tensor(ids)[at], reduction="none")
    losses: list[float | None] = [None] * len(ids)
    for i, value in zip(scored, nats.tolist(), strict=True):
        losses[i] = value
    return losses


def _mask_id(tokenizer: Tokenizer) -> int:
    if tokenizer.mask_id is None:
        raise LMForgeError(
            "this BERT's tokenizer has no [MASK] token, which the pseudo-log-likelihood needs; "
            "use a run prepared with --tokenizer wordpiece"
        )
    return tokenizer.mask_id


def inspect_tokens(
    run_dir: Path,
    prompt: str,
    plot: Path | None = None,
    overwrite: bool = False,
    which: str = "latest",
) -> dict[str, Any]:
    """Each token of the prompt: its piece, id and loss in nats (a GPT's next-token loss, a
    BERT's pseudo-log-likelihood), and their mean; the coloured strip goes to `plot`."""
    check_plot_target(plot, overwrite)
    model, tokenizer = load_for_reading(run_dir, which)
    ids = encode_prompt(model, tokenizer, prompt)
    if isinstance(model, BERT):
        kind = PSEUDO_LOG_LIKELIHOOD
        losses = pseudo_log_likelihood_nats(model, ids, _mask_id(tokenizer), tokenizer.special_ids)
    else:
        kind, losses = NEXT_TOKEN, next_token_nats(model, ids)
    pieces = token_pieces(tokenizer, ids)
    known = [value for value in losses if value is not None]
    if plot is not None:
        plot_token_losses(pieces, ids, losses, plot, f"{kind} loss of each token")
    return {
        "run": str(run_dir),
        "arch": model.cfg.arch,
        "tokens": pieces,
        "ids": ids,
        "loss": losses,
        "loss_kind": kind,
        "mean_loss": sum(known) / len(known) if known else None,
        "plot": None if plot is None else str(plot),
    }


def inspect_attention(
    run_dir: Path,
    prompt: str,
    layer: int | None = None,
    head: int | None = None,
    plot: Path | None = None,
    overwrite: bool = False,
    which: str = "latest",
) -> dict[str, Any]:
    """The attention probabilities of the prompt: "attention" [layers][heads][T][T] over the
    chosen layer and head (every one where None), row q the distribution of query token q over
    the key tokens; the heat map (one head, or a grid) goes to `plot`."""
    check_plot_target(plot, overwrite)
    model, tokenizer = load_for_reading(run_dir, which)
    layers = select(layer, model.cfg.n_layer, "--layer", "layers")
    heads = select(head, model.cfg.n_head, "--head", "heads per layer")
    ids = encode_prompt(model, tokenizer, prompt)
    maps = attention_maps(model, torch.tensor(ids))[layers][:, heads]  # (L', H', T, T)
    pieces = token_pieces(tokenizer, ids)
    if plot is not None:
        plot_attention(maps.numpy(), layers, heads, pieces, plot)
    return {
        "run": str(run_dir),
        "arch": model.cfg.arch,
        "tokens": pieces,
        "ids": ids,
        "layers": layers,
        "heads": heads,
        "attention": maps.tolist(),
        "plot": None if plot is None else str(plot),
    }
