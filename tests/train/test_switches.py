"""Training switches: activation checkpointing, torch.compile per block, fp16 with a loss scaler.

Besides "the results are unchanged", each switch is shown to act on the model that
session.prepare_model (the wiring behind `lmforge pretrain`) hands to the trainer.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from lmforge.config import DistConfig, ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from lmforge.data.batches import clm_batch, step_generator
from lmforge.errors import ConfigError
from lmforge.jobs.pretrain import pretrain
from lmforge.jobs.session import TrainingPlan, prepare_model
from lmforge.model import BERT, GPT
from lmforge.train.distributed import DistContext
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.trainer import Trainer

PATTERN = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46]


def _batch(cfg: ModelConfig, rows: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (rows, cfg.block_size), generator=g)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model: torch.nn.Module, run) -> int:
    """Bytes the autograd graph keeps for the backward pass while run() builds the loss."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    loss.backward()
    return total


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(arch: str) -> None:
    cfg = ModelConfig(
        arch=arch, n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=61, dropout=0.1
    )
    torch.manual_seed(0)
    model = GPT(cfg) if arch == "gpt" else BERT(cfg)
    model.train()
    idx = _batch(cfg)

    def loss() -> torch.Tensor:
        out = model(idx) if arch == "gpt" else model.encode(idx)
        return out.float().square().mean()

    torch.manual_seed(1)  # the same dropout masks in both passes
    plain = _grads(model, loss())
    keep_plain = _saved_bytes(model, loss)
    model.activation_checkpointing = True
    torch.manual_seed(1)
    recomputed = _grads(model, loss())
    keep_recomputed = _saved_bytes(model, loss)
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert keep_recomputed < 0.5 * keep_plain  # only each block's input is kept
    model.eval()
    with torch.no_grad():  # no effect outside training
        on = loss()
        model.activation_checkpointing = False
        assert torch.equal(on, loss())


def _run_cfg(prepared_dir: Path, **train: object) -> RunConfig:
    base = {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "data": {"dir": str(prepared_dir)},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "eval_interval": 4,
            "eval_batches": 1,
            "checkpoint_interval": 4,
            "warmup_steps": 1,
            "log_interval": 1,
            "progress": False,
            **train,
        },
    }
    return from_dict(RunConfig, base)


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_activation_checkpointing_switch_trains_the_same(prepared_dir: Path, tmp_path) -> None:
    plain = _run_cfg(prepared_dir)
    on = from_dict(RunConfig, {**to_dict(plain), "dist": {"activation_checkpointing": True}})
    pretrain(plain, tmp_path / "plain")
    pretrain(on, tmp_path / "on")
    for a, b in zip(_losses(tmp_path / "plain"), _losses(tmp_path / "on"), strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_compile_per_block_trains_the_same_and_saves_plain_names(
    prepared_dir: Path, tmp_path: Path
) -> None:
    pretrain(_run_cfg(prepared_dir), tmp_path / "eager")
    pretrain(_run_cfg(prepared_dir, compile=True), tmp_path / "compiled")
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(compiled) == 4
    for a, b in zip(eager, compiled, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a)
    names = set(load_file(str(tmp_path / "compiled" / "model.safetensors")))
    assert names == set(load_file(str(tmp_path / "eager" / "model.safetensors")))
    assert not any("_orig_mod" in name for name in names)


def _pattern_batches(cfg: ModelConfig):
    stream = torch.tensor(PATTERN * 32)

    def batches(step: int, micro: int):
        g = step_generator(0, 0, step, micro)
        starts = torch.randint(0, len(stream) - cfg.block_size - 1, (8,), generator=g)
        return clm_batch(torch.stack([stream[s : s + cfg.block_size + 1] for s in starts]))

    return batches


def test_float16_learns_and_survives_overflowing_loss_scales() -> None:
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)
    train = TrainConfig(
        max_steps=40, lr=1e-2, warmup_steps=2, dtype="float16", progress=False, eval_interval=40
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    trainer = Trainer(model, build_optimizer(model, train), _pattern_batches(cfg), train, clm_loss)
    assert trainer.scaler is not None
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # overflows at first
    first = trainer._step(0)[0]
    state = trainer.fit()
    assert state.skipped_steps >= 1  # the overflowing steps were skipped, not fatal
    assert trainer.scaler.get_scale() < 2.0**20
    last = trainer._step(state.step)[0]
    assert last < 0.25 * first  # fp32 reaches 0.02 x first in this setup
    saved = trainer.state_dict()
    assert saved["scaler"]["scale"] == trainer.scaler.get_scale()
    restored = Trainer(model, build_optimizer(model, train), _pattern_batches(cfg), train, clm_loss)
    restored.load_state_dict(saved)
    assert restored.scaler.get_scale() == trainer.scaler.get_scale()


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ConfigError, match="float32, bfloat16, float16 or auto"):
        dataclasses.replace(TrainConfig(), dtype="float8")


def _switched_cfg(arch: str, compile: bool = False, checkpointing: bool = False) -> RunConfig:
    """A tiny run config with train.compile and dist.activation_checkpointing as given."""
    model = ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=31)
    objective = "clm" if arch == "gpt" else "mlm"
    train = TrainConfig(compile=compile, device="cpu", objective=objective, progress=False)
    return RunConfig(
        model=model, train=train, dist=DistConfig(activation_checkpointing=checkpointing)
    )


def _prepared(cfg: RunConfig) -> torch.nn.Module:
    """The model `lmforge pretrain` trains: session.prepare_model in one CPU process."""
    model, trained = prepare_model(cfg, TrainingPlan(), torch.device("cpu"), DistContext(), None)
    assert trained is model  # no DDP wrapper in a single process
    return model


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_compile_switch_compiles_every_block_of_the_prepared_model(arch: str) -> None:
    """Module.compile() sets _compiled_call_impl (None while a module runs eagerly)."""
    compiled = _prepared(_switched_cfg(arch, compile=True))
    eager = _prepared(_switched_cfg(arch, compile=False))
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    assert all(block._compiled_call_impl is None for block in eager.blocks)


def test_a_compiled_block_runs_through_dynamo() -> None:
    """A forward of a prepared block with train.compile=true captures one dynamo graph; the
    eager block of train.compile=false captures none."""
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    for compile, graphs in ((False, 0), (True, 1)):
        block = _prepared(_switched_cfg("gpt", compile=compile)).blocks[0]
        torch._dynamo.reset()
        counters.clear()
        with torch.no_grad():
            block(x, None, None)
        assert counters["stats"]["unique_graphs"] == graphs, compile


def _block_calls(model: torch.nn.Module, arch: str, train: bool = True) -> list[int]:
    """How often each block's forward starts during one forward (and, training, backward).

    A pre-hook: checkpoint's recomputation stops early once it has what the backward needs,
    before a forward hook would run."""
    calls = [0] * len(model.blocks)

    def counter(i: int):
        def hook(*_: object) -> None:
            calls[i] += 1

        return hook

    handles = [b.register_forward_pre_hook(counter(i)) for i, b in enumerate(model.blocks)]
    idx = _batch(model.cfg, rows=2)
    model.train(train)
    with torch.set_grad_enabled(train):
        out = model(idx) if arch == "gpt" else model(idx).mlm
        if train:
            out.float().square().mean().backward()
    for handle in handles:
        handle.remove()
    return calls


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_activation_checkpointing_switch_recomputes_every_block(arch: str) -> None:
    """Recomputation runs each block's forward twice per training step (once more in the
    backward pass); without the switch once. Evaluation never recomputes."""
    on = _prepared(_switched_cfg(arch, checkpointing=True))
    off = _prepared(_switched_cfg(arch, checkpointing=False))
    assert _block_calls(on, arch) == [2, 2]
    assert _block_calls(off, arch) == [1, 1]
    assert _block_calls(on, arch, train=False) == [1, 1]
