"""finetune.freeze_embeddings on the model a `finetune lm`/`sft` run trains: the embeddings
take no gradient, are left out of the optimizer and keep their weights while the rest learns.

A tied LM head is the token embedding (one tensor), so freezing the embeddings freezes the
head too; an untied head keeps learning.
"""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lmforge.config import ModelConfig, RunConfig, to_dict
from lmforge.data.batches import Batch
from lmforge.jobs.finetune_start import base_model, resolve
from lmforge.jobs.session import TrainingPlan, prepare_model
from lmforge.model import GPT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.train.distributed import DistContext
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer

VOCAB = 31
UNTIED_ROPE = {"tie_weights": False, "pos_emb": "rope"}


def _base_run(root: Path, **model: object) -> Path:
    """A base run directory: config.json and the weights of a seeded tiny GPT."""
    cfg = RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=VOCAB, **model)
    )
    run = root / "base"
    run.mkdir()
    (run / layout.CONFIG_FILE).write_text(json.dumps(to_dict(cfg)), encoding="utf-8")
    torch.manual_seed(0)
    ckpt.save_weights(GPT(cfg.model), run / layout.MODEL_FILE)
    return run


def _fine_tuned(base: Path, frozen: bool) -> tuple[nn.Module, dict[str, torch.Tensor], set[int]]:
    """(model after 3 AdamW steps, its weights before them, ids of the optimizer's tensors)
    through the wiring of `finetune lm --freeze-embeddings`: resolve, base_model and
    session.prepare_model."""
    sets = ["train.device=cpu", "train.lr=1e-2", "train.progress=false"]
    cfg = resolve("lm", base, None, sets, {"freeze_embeddings": frozen})
    plan = TrainingPlan(build=base_model(cfg))
    model, _ = prepare_model(cfg, plan, torch.device("cpu"), DistContext(), None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg.train)
    ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        optimizer.zero_grad()
        clm_loss(model, Batch(inputs=ids[:, :-1], targets=ids[:, 1:])).backward()
        optimizer.step()
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return model, before, trained


def _changed(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {n: not torch.equal(p, before[n]) for n, p in model.named_parameters()}


def _embeddings(model: nn.Module) -> list[str]:
    names = ["tok_emb.weight"]
    return names + (["pos_emb.weight"] if model.pos_emb is not None else [])


@pytest.mark.parametrize("model", [{}, UNTIED_ROPE], ids=["tied-learned", "untied-rope"])
def test_frozen_embeddings_keep_their_weights_while_the_rest_learns(
    tmp_path: Path, model: dict
) -> None:
    tuned, before, trained = _fine_tuned(_base_run(tmp_path, **model), frozen=True)
    changed = _changed(tuned, before)
    params = dict(tuned.named_parameters())
    for name in _embeddings(tuned):
        assert not params[name].requires_grad, name
        assert id(params[name]) not in trained, name
        assert not changed[name], name
    others = [n for n in changed if n not in _embeddings(tuned)]
    assert others
    assert all(changed[n] for n in others), [n for n in others if not changed[n]]
    if tuned.cfg.tie_weights:  # the head is the token embedding: frozen with it
        assert tuned.lm_head.weight is tuned.tok_emb.weight
    else:
        assert "lm_head.weight" in others


@pytest.mark.parametrize("model", [{}, UNTIED_ROPE], ids=["tied-learned", "untied-rope"])
def test_without_the_switch_the_embeddings_learn(tmp_path: Path, model: dict) -> None:
    tuned, before, trained = _fine_tuned(_base_run(tmp_path, **model), frozen=False)
    changed = _changed(tuned, before)
    params = dict(tuned.named_parameters())
    for name in _embeddings(tuned):
        assert params[name].requires_grad, name
        assert id(params[name]) in trained, name
        assert changed[name], name
