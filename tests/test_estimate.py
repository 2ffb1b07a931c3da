"""lmforge estimate against measurements of the real model, not against its own formulas:
parameters counted on the built model, FLOPs counted by torch's FLOP counter, optimizer,
gradient and activation bytes measured during a training step, plus scaling properties."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmforge.cli.main import main
from lmforge.config import RunConfig, load_config
from lmforge.errors import ConfigError
from lmforge.jobs.estimate import estimate
from lmforge.rundir.load import build_model
from lmforge.train.optim import build_optimizer

SETS = ["model.vocab_size=1000", "model.n_layer=4", "model.n_embd=64", "model.n_head=4"]
SMALL = ["model.vocab_size=300", "model.n_layer=2", "model.n_embd=32", "model.n_head=4"]
SMALL += ["model.block_size=16", "train.batch_size=2"]
VARIANTS = {
    "gpt": [],
    "untied": ["model.tie_weights=false"],
    "rope": ["model.pos_emb=rope"],
    "gqa": ["model.n_kv_head=2", "model.bias=false"],
    "pruned": ["model.head_size=4", "model.mlp_hidden=40"],
    "bert": ["model.arch=bert", "train.objective=mlm"],
    "bert-no-types": ["model.arch=bert", "train.objective=mlm", "model.type_vocab_size=0"],
}


def _cfg(*sets: str) -> RunConfig:
    return load_config(None, [*SMALL, *sets])


def _built(cfg: RunConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg).train()


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    return out.mlm.float().square().mean() + out.nsp.float().square().mean()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parameters_are_the_built_models_distinct_tensors(variant: str) -> None:
    model = _built(_cfg(*VARIANTS[variant]))
    distinct = {id(p): p for p in model.parameters()}.values()  # a tied head counts once
    assert estimate(_cfg(*VARIANTS[variant]))["parameters"] == sum(p.numel() for p in distinct)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_flops_per_token_cover_the_counted_training_flops(variant: str) -> None:
    """torch's FlopCounterMode over a forward and backward (attention through the math kernel,
    whose QKᵀ and AV matmuls it counts) divided by the tokens: the estimate, 6N + attention,
    lies between that and 8% above it (6N also counts biases and LayerNorm gains, which run
    no matmul; measured: 2-6% above)."""
    cfg = _cfg(*VARIANTS[variant])
    model = _built(cfg)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _loss(model, ids).backward()
    measured = counter.get_total_flops() / ids.numel()
    assert measured <= estimate(cfg)["flops_per_token"] <= 1.08 * measured


def _measured_activations(cfg: RunConfig) -> int:
    """Bytes the autograd graph keeps from a training forward of cfg's model (a next-token
    loss): every distinct storage packed by saved_tensors_hooks, the parameters left out."""
    model = _built(cfg)
    model.activation_checkpointing = cfg.dist.activation_checkpointing
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    rows, width = cfg.train.batch_size, cfg.model.block_size + 1
    ids = torch.randint(0, cfg.model.vocab_size, (rows, width))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return sum(kept.values())


ACTIVATIONS = ["model.n_embd=64", "model.block_size=64", "train.batch_size=4"]


def _activations(layers: int, vocab: int, *sets: str) -> tuple[float, int]:
    """(estimated, measured) activation bytes of a fp32 GPT, 64 wide, 4 x 64 tokens."""
    cfg = _cfg(*ACTIVATIONS, f"model.n_layer={layers}", f"model.vocab_size={vocab}", *sets)
    return estimate(cfg)["memory_per_device"]["activations"], _measured_activations(cfg)


def test_activation_estimate_matches_the_measured_saved_tensors() -> None:
    """Within 10% in total (measured 0.98-1.01 x), per block (≈17 values per token and channel:
    measured 16.1) and per vocabulary entry (the logits: 4 bytes per token, measured exactly)."""
    (e22, m22), (e42, m42), (e24, m24) = (_activations(*s) for s in ((2, 256), (4, 256), (2, 1024)))
    for est, measured in ((e22, m22), (e42, m42), (e24, m24)):
        assert measured == pytest.approx(est, rel=0.10)
    assert (m42 - m22) / 2 == pytest.approx((e42 - e22) / 2, rel=0.10)  # one block
    assert (m24 - m22) / 768 == pytest.approx((e24 - e22) / 768, rel=0.01)  # one vocab entry


def test_checkpointing_estimate_matches_what_checkpointing_keeps() -> None:
    """With dist.activation_checkpointing the forward keeps each block's input only (4 bytes
    per token and channel per block, measured exactly); the backward recomputes one block at a
    time, which keeps that block's activations: forward-kept + one block's (measured without
    checkpointing) is within 10% of the estimate (measured 1.05 x)."""
    on = "dist.activation_checkpointing=true"
    (e2, m2), (e4, m4) = _activations(2, 256, on), _activations(4, 256, on)
    plain2, plain4 = _activations(2, 256)[1], _activations(4, 256)[1]
    assert m2 < plain2 / 2
    assert (m4 - m2) / 2 == pytest.approx((e4 - e2) / 2, rel=0.05)
    one_block = (plain4 - plain2) / 2
    assert m2 + one_block == pytest.approx(e2, rel=0.10)
    assert m4 + one_block == pytest.approx(e4, rel=0.10)


def test_activations_scale_with_batch_and_context_and_halve_in_half_precision() -> None:
    """Twice the rows or twice the context doubles activations (no T² term: SDPA keeps no
    attention matrix), measured and estimated alike; bf16/fp16 keep 2-byte values."""
    base = _cfg(*ACTIVATIONS)
    est = estimate(base)["memory_per_device"]["activations"]
    measured = _measured_activations(base)
    for doubled in ("train.batch_size=8", "model.block_size=128"):
        cfg = _cfg(*ACTIVATIONS, doubled)
        assert estimate(cfg)["memory_per_device"]["activations"] == pytest.approx(2 * est)
        assert _measured_activations(cfg) == pytest.approx(2 * measured, rel=0.02)
    for half in ("bfloat16", "float16"):
        cfg = _cfg(*ACTIVATIONS, f"train.dtype={half}")
        assert estimate(cfg)["memory_per_device"]["activations"] == pytest.approx(est / 2)


def test_weights_gradients_and_adamw_states_are_the_measured_bytes() -> None:
    """After one AdamW step of the real model: weights, gradients and optimizer state bytes
    (exp_avg and exp_avg_sq; the step counters are left out) as estimated for one device."""
    cfg = _cfg()
    model = _built(cfg)
    optimizer = build_optimizer(model, cfg.train)
    _loss(model, torch.randint(0, 300, (2, 16))).backward()
    optimizer.step()
    params = list({id(p): p for p in model.parameters()}.values())
    states = [optimizer.state[p][key] for p in params for key in ("exp_avg", "exp_avg_sq")]
    memory = estimate(cfg)["memory_per_device"]
    assert memory["weights"] == sum(p.numel() * p.element_size() for p in params)
    assert memory["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert memory["optimizer"] == sum(s.numel() * s.element_size() for s in states)


def test_fsdp_shards_the_states_over_the_world_and_ddp_does_not() -> None:
    single = estimate(load_config(None, SETS))["memory_per_device"]
    ddp = estimate(load_config(None, [*SETS, "dist.strategy=ddp"]), world_size=4)
    fsdp = estimate(load_config(None, [*SETS, "dist.strategy=fsdp"]), world_size=4)
    for kind in ("gradients", "optimizer"):
        assert ddp["memory_per_device"][kind] == single[kind]
        assert fsdp["memory_per_device"][kind] == pytest.approx(single[kind] / 4)
    # a quarter of the weights, plus room for one block's full weights while it computes
    block = sum(p.numel() for p in _built(load_config(None, SETS)).blocks[0].parameters())
    gathered = fsdp["memory_per_device"]["weights"] - single["weights"] / 4
    assert 4 * block <= gathered < 3 * single["weights"] / 4
    assert fsdp["memory_per_device"]["activations"] == single["activations"]
    assert fsdp["tokens_per_step"] == ddp["tokens_per_step"] == 4 * 12 * 256


def test_cli_prints_json_and_refuses_bad_input(capsys: pytest.CaptureFixture) -> None:
    args = ["estimate", *[x for s in SETS for x in ("--set", s)]]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["world_size"] == 1
    assert main(["estimate"]) == 2
    assert "model.vocab_size" in capsys.readouterr().err
    assert main([*args, "--world-size", "4"]) == 2
    assert "dist.strategy" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"dist\.strategy"):
        load_config(None, ["dist.strategy=zero3"])
