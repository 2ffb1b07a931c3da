"""The speedrun's recipe switches: Muon, the sequence-length and batch-size schedules, and a
resumed run staying bit-identical with every switch on."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import ModelConfig, RunConfig, TrainConfig, load_config, scheduled
from lmforge.data.sources import batch_sources, open_data
from lmforge.errors import ConfigError
from lmforge.jobs.pretrain import pretrain, resume
from lmforge.model import GPT
from lmforge.rundir import layout
from lmforge.train.muon import Muon, MuonWithAdamW, orthogonalize
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.trainer import Trainer

# ---------------------------------------------------------------- Muon


def test_muon_follows_torch_muon_exactly() -> None:
    """Same momentum, Nesterov look-ahead, Newton-Schulz (bf16), shape factor and decay."""
    torch.manual_seed(0)
    start = torch.randn(48, 16)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    a = Muon([ours], lr=0.03, momentum=0.9, weight_decay=0.1, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon([theirs], lr=0.03, momentum=0.9, weight_decay=0.1)
    for _ in range(4):
        grad = torch.randn(48, 16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert ours.equal(theirs)
    assert not ours.equal(start)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16)])
def test_newton_schulz_pushes_singular_values_towards_one(shape: tuple[int, int]) -> None:
    torch.manual_seed(1)
    rank = min(shape)
    left, _ = torch.linalg.qr(torch.randn(shape[0], rank))
    right, _ = torch.linalg.qr(torch.randn(shape[1], rank))
    skewed = left @ torch.diag(torch.logspace(-2, 0, rank)) @ right.T  # condition number 100
    after = torch.linalg.svdvals(orthogonalize(skewed, dtype=torch.float32))
    assert after.min() > 0.6  # quintic NS: every direction roughly in [0.7, 1.2]
    assert after.max() < 1.25
    assert orthogonalize(skewed, dtype=torch.float32).shape == skewed.shape


def _model(**overrides: object) -> GPT:
    cfg = {"vocab_size": 40, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    cfg.update({"pos_emb": "rope", "bias": True, "tie_weights": False, "qk_norm": True})
    cfg.update(overrides)
    return GPT(ModelConfig(**cfg))


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = _model()
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05))
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]}
    expected = {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert muon == expected
    assert adamw == set(names.values()) - expected
    assert {"tok_emb.weight", "lm_head.weight", "ln_f.weight", "blocks.0.attn.qkv.bias"} <= adamw
    # one optimizer to the trainer: every parameter in exactly one group
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names)


def test_the_schedule_scales_muons_lr_by_its_ratio() -> None:
    torch.manual_seed(0)
    model = _model()
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05, warmup_steps=4, max_steps=8)
    optimizer = build_optimizer(model, cfg)
    batch = _clm_batch()
    trainer = Trainer(model, optimizer, lambda step, micro: batch, cfg, clm_loss)
    trainer.fit(stop_at=2)  # the lr of step 1 (of 0..7) is 2/4 of the peak
    lrs = {id(g): g["lr"] for g in optimizer.param_groups}
    assert [lrs[id(g)] for g in optimizer.muon.param_groups] == [pytest.approx(0.05 * 2 / 4)]
    assert [lrs[id(g)] for g in optimizer.adamw.param_groups] == [pytest.approx(1e-3 * 2 / 4)] * 2
    assert all(
        "momentum_buffer" in optimizer.state[p] for p in optimizer.muon.param_groups[0]["params"]
    )


def _clm_batch():
    from lmforge.data.batches import clm_batch

    return clm_batch(torch.randint(0, 40, (4, 17), generator=torch.Generator().manual_seed(3)))


def test_muon_trains_differently_from_adamw() -> None:
    """The switch does something: the same steps move the block matrices differently."""
    moved = {}
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        model = _model()
        cfg = TrainConfig(optimizer=name, warmup_steps=0, max_steps=3, grad_clip=0)
        batch = _clm_batch()
        trainer = Trainer(model, build_optimizer(model, cfg), lambda s, m: batch, cfg, clm_loss)  # noqa: B023
        trainer.fit()
        moved[name] = model.blocks[0].mlp.fc.weight.detach().clone()
    assert not torch.allclose(moved["adamw"], moved["muon"])


def test_muon_under_fsdp_is_refused() -> None:
    with pytest.raises(ConfigError, match="FSDP"):
        load_config(None, ["train.optimizer=muon", "dist.strategy=fsdp"])


def test_muon_state_round_trips_through_state_dict() -> None:
    model = _model()
    cfg = TrainConfig(optimizer="muon", warmup_steps=0)
    optimizer = build_optimizer(model, cfg)
    clm_loss(model, _clm_batch()).backward()
    optimizer.step()
    saved = optimizer.state_dict()
    fresh = build_optimizer(model, cfg)
    fresh.load_state_dict(saved)
    # the inner optimizers see the loaded state, not the empty one they were built with
    fc = model.blocks[0].mlp.fc.weight
    assert fresh.muon.state[fc]["momentum_buffer"].equal(optimizer.state[fc]["momentum_buffer"])
    assert fresh.adamw.state is fresh.state
    assert fresh.muon.param_groups[0] is fresh.param_groups[-1]


# ---------------------------------------------------------------- schedules


def test_scheduled_value_is_the_last_pair_reached() -> None:
    schedule = ((10, 32), (20, 64))
    values = [scheduled(schedule, s, 128) for s in (0, 9, 10, 19, 20, 1000)]
    assert values == [128, 128, 32, 32, 64, 64]
    assert scheduled((), 5, 7) == 7


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.seq_len_schedule=[[0, 64], [10, 300]]"], "exceeds model.block_size"),
        (["train.seq_len_schedule=[[10, 64], [5, 128]]"], "increasing"),
        (["train.batch_size_schedule=[[0, 0]]"], "positive"),
        (["train.batch_size_schedule=[0, 4]"], "pairs"),
    ],
)
def test_bad_schedules_are_refused(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.block_size=256", *sets])


def test_pretraining_batches_follow_both_schedules(prepared_dir: Path) -> None:
    cfg = load_config(
        None,
        [
            f"data.dir={prepared_dir}",
            "model.block_size=32",
            "train.batch_size=4",
            "train.seq_len_schedule=[[0, 8], [3, 16]]",
            "train.batch_size_schedule=[[2, 6]]",
        ],
    )
    shards, tokenizer = open_data(cfg)
    train_batch, val_batches = batch_sources(cfg, shards, tokenizer)
    shapes = [tuple(train_batch(step, 0).inputs.shape) for step in range(5)]
    assert shapes == [(4, 8), (4, 8), (6, 8), (6, 16), (6, 16)]
    assert {tuple(b.inputs.shape) for b in val_batches()} == {(4, 32)}  # validation: full size


# ---------------------------------------------------------------- every switch at once

EVERY_SWITCH = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "model.pos_emb=rope",
    "model.qk_norm=true",
    "model.activation=relu2",
    "model.zero_init_proj=true",
    "model.tie_weights=false",
    "train.optimizer=muon",
    "train.schedule=wsd",
    "train.decay_fraction=0.5",
    "train.dtype=bfloat16",
    "train.seq_len_schedule=[[0, 8], [3, 16], [6, 32]]",
    "train.batch_size_schedule=[[0, 2], [4, 4]]",
    "train.batch_size=4",
    "train.max_steps=8",
    "train.warmup_steps=1",
    "train.eval_interval=4",
    "train.checkpoint_interval=4",
    "train.eval_batches=2",
    "train.log_interval=1",
    "train.progress=false",
]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / layout.METRICS_FILE).read_text().splitlines()]


def _comparable(run: Path) -> list[tuple]:
    keep = ("step", "loss", "grad_norm", "tokens_seen", "val_loss")
    return [tuple(r.get(k) for k in keep) for r in _records(run)]


@pytest.mark.slow
def test_resume_is_bit_identical_with_every_switch_on(prepared_dir: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    pretrain(load_config(None, [*EVERY_SWITCH, f"data.dir={prepared_dir}"]), whole)
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / layout.CHECKPOINTS_DIR / "step_0000008")  # killed before step 8's
    resume(killed, [])
    assert _comparable(killed) == _comparable(whole)
    tokens = [r["tokens_seen"] for r in _records(whole) if "tokens_seen" in r]
    # 2x8, 2x8, 2x8, 2x16 then 4x16, 4x16, 4x32, 4x32 tokens: both schedules were followed
    steps = [16, 16, 16, 32, 64, 64, 128, 128]
    assert tokens == [sum(steps[: i + 1]) for i in range(8)]
    for name in ("model.safetensors", "checkpoints/step_0000008/model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(killed / name))
        assert all(a[k].equal(b[k]) for k in a), name
    assert json.loads((whole / layout.CONFIG_FILE).read_text())["train"]["optimizer"] == "muon"


def test_finetunes_refuse_the_shape_schedules(tmp_path: Path) -> None:
    from lmforge.jobs.session import _refuse_schedules

    cfg = RunConfig(train=TrainConfig(batch_size_schedule=((0, 4),)))
    with pytest.raises(ConfigError, match="pretraining"):
        _refuse_schedules(cfg)
