"""lmforge estimate: exact parameter counts, FSDP sharding, checkpointing, bad input."""

import json

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.estimate import estimate
from lmforge.model import GPT

SETS = ["model.vocab_size=1000", "model.n_layer=4", "model.n_embd=64", "model.n_head=4"]


def test_parameters_and_flops_are_the_real_models() -> None:
    cfg = load_config(None, SETS)
    result = estimate(cfg)
    model = GPT(cfg.model)
    assert result["parameters"] == model.num_params()
    assert result["flops_per_token"] == pytest.approx(model.flops_per_token())


def test_fsdp_shards_the_states_and_checkpointing_shrinks_activations() -> None:
    ddp = estimate(load_config(None, [*SETS, "dist.strategy=ddp"]), world_size=4)
    fsdp = estimate(load_config(None, [*SETS, "dist.strategy=fsdp"]), world_size=4)
    p = ddp["parameters"]
    assert ddp["memory_per_device"]["optimizer"] == 8 * p
    assert fsdp["memory_per_device"]["optimizer"] == 8 * p / 4
    assert fsdp["memory_per_device"]["gradients"] == 4 * p / 4
    assert fsdp["tokens_per_step"] == ddp["tokens_per_step"]  # micro batch x accum x devices
    plain = estimate(load_config(None, SETS))["memory_per_device"]["activations"]
    ckpt = estimate(load_config(None, [*SETS, "dist.activation_checkpointing=true"]))
    cfg = load_config(None, SETS)
    tokens_x_width = cfg.train.batch_size * cfg.model.block_size * cfg.model.n_embd
    # 4 layers: 4 x 17 values per token and channel, against 4 kept inputs + 1 block recomputed
    saved = (4 * 17 - (4 + 17)) * tokens_x_width * 4
    assert ckpt["memory_per_device"]["activations"] == plain - saved
    for half in ("bfloat16", "float16"):
        autocast = estimate(load_config(None, [*SETS, f"train.dtype={half}"]))
        assert autocast["memory_per_device"]["activations"] == plain / 2


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
