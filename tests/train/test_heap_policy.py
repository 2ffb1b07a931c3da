"""The never-trimmed heap (runtime.keep_freed_memory) is asked for only where batch shapes
repeat: with a new padded length every step it fragmented, and a classify run grew to 13 GB."""

import torch

from lmforge.config import load_config
from lmforge.jobs import session
from lmforge.jobs.session import TrainingPlan, fixed_shapes, prepare_model
from lmforge.train.distributed import DistContext


def test_only_clm_windows_count_as_fixed_shapes() -> None:
    clm = load_config(None, ["train.objective=clm"])
    mlm = load_config(None, ["model.arch=bert", "train.objective=mlm"])
    assert fixed_shapes(clm, TrainingPlan())
    assert not fixed_shapes(mlm, TrainingPlan())
    assert not fixed_shapes(clm, TrainingPlan(sources=lambda cfg: None))  # a fine-tune's batches


def test_prepare_model_keeps_freed_memory_for_pretraining_only(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(session, "keep_freed_memory", lambda: calls.append(1))
    cfg = load_config(
        None,
        [
            "model.n_layer=1",
            "model.n_embd=16",
            "model.n_head=1",
            "model.vocab_size=32",
            "model.block_size=8",
        ],
    )
    ctx = DistContext()
    cpu = torch.device("cpu")
    prepare_model(cfg, TrainingPlan(), cpu, ctx, None)
    assert calls == [1]
    prepare_model(cfg, TrainingPlan(sources=lambda c: None), cpu, ctx, None)
    assert calls == [1]  # not again for variable shapes
