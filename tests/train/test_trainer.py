"""The Trainer: accumulation, learning, the non-finite guard, exact resume, and checkpoints."""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import ModelConfig, RunConfig, TrainConfig
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.errors import CheckpointError, TrainingDiverged
from lmforge.model import GPT
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import IGNORE_INDEX, clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer

PATTERN = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46]


def _random_source(cfg: ModelConfig, batch_size: int, seed: int = 0) -> Callable[[int, int], Batch]:
    """Random token windows that depend on (seed, step, micro) alone."""

    def batches(step: int, micro: int) -> Batch:
        g = step_generator(seed, 0, step, micro)
        return clm_batch(
            torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size + 1), generator=g)
        )

    return batches


def _pattern_source(
    cfg: ModelConfig, batch_size: int, seed: int = 0
) -> Callable[[int, int], Batch]:
    """Windows of a repeated pattern at random offsets: easy to learn."""
    stream = torch.tensor(PATTERN * 64)

    def batches(step: int, micro: int) -> Batch:
        g = step_generator(seed, 0, step, micro)
        starts = torch.randint(0, len(stream) - cfg.block_size - 1, (batch_size,), generator=g)
        return clm_batch(torch.stack([stream[s : s + cfg.block_size + 1] for s in starts]))

    return batches


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class GradRecorder(torch.optim.SGD):
    """An optimizer that records the gradients it is asked to apply and changes nothing."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, lr=0.0)
        self.grads: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        assert all(p.grad is not None for p in params)
        self.grads.append([p.grad.clone() for p in params])


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize(("accum", "micro_batch"), [(2, 3), (4, 1)])
def test_accumulating_k_micro_batches_equals_one_big_batch(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig, accum: int, micro_batch: int
) -> None:
    big = _random_source(tiny_model_cfg, accum * micro_batch)

    def micro_batches(step: int, micro: int) -> Batch:
        whole = big(step, 0)
        rows = slice(micro * micro_batch, (micro + 1) * micro_batch)
        return Batch(whole.inputs[rows], whole.targets[rows])

    recorded = []
    for grad_accum, source, batch_size in (
        (accum, micro_batches, micro_batch),
        (1, big, accum * micro_batch),
    ):
        torch.manual_seed(0)
        model = GPT(tiny_model_cfg)
        cfg = dataclasses.replace(
            tiny_train_cfg, grad_accum=grad_accum, batch_size=batch_size, grad_clip=0.0, max_steps=2
        )
        recorder = GradRecorder(model.parameters())
        trainer = Trainer(model, recorder, source, cfg, clm_loss)
        state = trainer.fit()
        assert state.tokens_seen == 2 * accum * micro_batch * tiny_model_cfg.block_size
        recorded.append(recorder.grads)
    accumulated, single = recorded
    assert len(accumulated) == len(single) == 2
    for step in range(2):
        for a, b in zip(accumulated[step], single[step], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the second step saw the same weights and a fresh batch: gradients were reset in between
    assert not torch.allclose(accumulated[0][0], accumulated[1][0])


def test_gradients_do_not_leak_into_the_next_step(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    same_batch = _random_source(tiny_model_cfg, 2)
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    recorder = GradRecorder(model.parameters())
    cfg = dataclasses.replace(tiny_train_cfg, grad_accum=3, grad_clip=0.0, max_steps=3)
    Trainer(model, recorder, lambda step, micro: same_batch(0, micro), cfg, clm_loss).fit()
    for later in recorder.grads[1:]:
        for a, b in zip(recorder.grads[0], later, strict=True):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------- learning


def test_loss_falls_on_a_repeated_pattern(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    cfg = dataclasses.replace(
        tiny_train_cfg, max_steps=40, batch_size=8, lr=1e-2, min_lr=1e-3, eval_interval=10
    )
    val = [_pattern_source(tiny_model_cfg, 8, seed=99)(i, 0) for i in range(2)]
    tracker = Tracker(None, cfg.max_steps, 0, progress=False)
    trainer = Trainer(
        model,
        build_optimizer(model, cfg),
        _pattern_source(tiny_model_cfg, cfg.batch_size),
        cfg,
        clm_loss,
        val_batches=lambda: val,
        tracker=tracker,
    )
    state = trainer.fit()
    steps = [step for step, _ in tracker.val_points]
    losses = [loss for _, loss in tracker.val_points]
    assert steps == [0, 10, 20, 30, 40]
    assert losses[0] > 4.0  # about ln(97) at initialisation
    assert losses[-1] < 0.25 * losses[0]
    assert state.best_val_loss == min(losses)
    assert state.last_val_loss == losses[-1]
    assert state.step == 40
    assert state.skipped_steps == 0
    train_losses = [loss for _, loss in tracker.train_points]
    assert len(train_losses) == 40
    assert sum(train_losses[-5:]) < 0.5 * sum(train_losses[:5])


# ---------------------------------------------------------------- the non-finite guard


def test_non_finite_step_is_skipped_and_leaves_weights_unchanged(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    bad_step = 3
    good = _random_source(tiny_model_cfg, tiny_train_cfg.batch_size)

    def batches(step: int, micro: int) -> Batch:
        batch = good(step, micro)
        if step == bad_step:  # every target ignored: the mean cross-entropy is 0/0 = NaN
            return Batch(batch.inputs, torch.full_like(batch.targets, IGNORE_INDEX))
        return batch

    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    optimizer = build_optimizer(model, tiny_train_cfg)
    trainer = Trainer(model, optimizer, batches, tiny_train_cfg, clm_loss)
    trainer.fit(stop_at=bad_step)
    before = _weights(model)
    state = trainer.fit(stop_at=bad_step + 1)
    assert state.step == bad_step + 1
    assert state.skipped_steps == 1
    assert _same_weights(_weights(model), before)
    assert all(p.grad is None for p in model.parameters())  # the NaN gradients were dropped
    adam_steps = {int(s["step"]) for s in optimizer.state.values()}
    assert adam_steps == {bad_step}  # the optimizer never saw the bad step

    state = trainer.fit()  # training goes on normally
    assert state.step == tiny_train_cfg.max_steps
    assert state.skipped_steps == 1
    after = _weights(model)
    assert not _same_weights(after, before)
    assert all(torch.isfinite(t).all() for t in after.values())


class NaNObjective:
    """clm_loss, but NaN on the calls listed in `bad` (one call per step with grad_accum=1)."""

    def __init__(self, bad: Callable[[int], bool]) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        loss = clm_loss(model, batch)
        call, self.calls = self.calls, self.calls + 1
        return loss * float("nan") if self.bad(call) else loss


def test_too_many_non_finite_steps_in_a_row_raise(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = dataclasses.replace(tiny_train_cfg, max_bad_steps=2)
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    before = _weights(model)
    source = _random_source(tiny_model_cfg, cfg.batch_size)
    trainer = Trainer(
        model, build_optimizer(model, cfg), source, cfg, NaNObjective(lambda call: True)
    )
    with pytest.raises(TrainingDiverged, match="diverged") as excinfo:
        trainer.fit()
    assert "--resume" in str(excinfo.value)
    assert trainer.state.skipped_steps == cfg.max_bad_steps + 1
    assert _same_weights(_weights(model), before)


def test_isolated_non_finite_steps_do_not_stop_training(
    tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = dataclasses.replace(tiny_train_cfg, max_bad_steps=1)
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    source = _random_source(tiny_model_cfg, cfg.batch_size)
    every_other = NaNObjective(lambda call: call % 2 == 1)
    state = Trainer(model, build_optimizer(model, cfg), source, cfg, every_other).fit()
    assert state.step == cfg.max_steps
    assert state.skipped_steps == cfg.max_steps // 2


# ---------------------------------------------------------------- exact resume


def _resume_setup(
    model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, save: Any = None
) -> tuple[GPT, Trainer]:
    torch.manual_seed(seed)
    model = GPT(model_cfg)
    val = [_random_source(model_cfg, 2, seed=1)(i, 0) for i in range(2)]
    trainer = Trainer(
        model,
        build_optimizer(model, train_cfg),
        _pattern_source(model_cfg, train_cfg.batch_size),
        train_cfg,
        clm_loss,
        val_batches=lambda: val,
        save=save,
    )
    return model, trainer


def test_resume_is_bit_identical(
    tmp_path: Path, tiny_model_cfg: ModelConfig, tiny_train_cfg: TrainConfig
) -> None:
    model_cfg = dataclasses.replace(tiny_model_cfg, dropout=0.1)  # RNG state matters
    train_cfg = tiny_train_cfg  # 12 steps, checkpoints every 4

    straight, trainer = _resume_setup(model_cfg, train_cfg, seed=0)
    trainer.fit()
    expected = _weights(straight)

    run_dir = tmp_path / "run"
    first, trainer = _resume_setup(
        model_cfg,
        train_cfg,
        seed=0,
        save=lambda state, best: ckpt.save_checkpoint(
            run_dir, first, state, best, train_cfg.keep_last
        ),
    )
    trainer.fit(stop_at=8)  # "interrupted" right after the step-8 checkpoint
    latest = ckpt.list_checkpoints(run_dir)[-1]
    assert latest.name == "step_0000008"

    torch.manual_seed(12345)  # whatever happened to the RNG in between must not matter
    torch.rand(100)
    resumed, trainer = _resume_setup(model_cfg, train_cfg, seed=777)
    ckpt.load_weights(resumed, latest / layout.MODEL_FILE)
    trainer.load_state_dict(ckpt.load_trainer_state(latest))
    assert trainer.state.step == 8
    state = trainer.fit()
    assert state.step == 12
    got = _weights(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


# ---------------------------------------------------------------- checkpoint files


def _trainer_state(model: torch.nn.Module, step: int) -> dict[str, Any]:
    cfg = TrainConfig(max_steps=10, warmup_steps=0, progress=False)
    trainer = Trainer(model, build_optimizer(model, cfg), lambda s, m: None, cfg, clm_loss)
    trainer.state.step = step
    return trainer.state_dict()


class Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: the model under a `module.` prefix."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize("wrap", ["compile", "ddp", "compile+ddp"])
def test_checkpoints_never_hold_wrapper_prefixes(
    tmp_path: Path, tiny_model_cfg: ModelConfig, wrap: str
) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    wrapped: torch.nn.Module = model
    if "compile" in wrap:
        wrapped = torch.compile(wrapped)  # built, never run
    if "ddp" in wrap:
        wrapped = Wrapper(wrapped)
    assert any(k.startswith(("_orig_mod.", "module.")) for k in wrapped.state_dict())
    clean = ckpt.clean_state_dict(wrapped)
    assert set(clean) == set(ckpt.clean_state_dict(model))
    assert not any("_orig_mod." in k or k.startswith("module.") for k in clean)

    final = ckpt.save_checkpoint(tmp_path, wrapped, _trainer_state(model, 3), True, keep_last=2)
    for path in (final / layout.MODEL_FILE, tmp_path / layout.MODEL_FILE):
        keys = load_file(str(path)).keys()
        assert not any("_orig_mod." in k or k.startswith("module.") for k in keys)
        assert "lm_head.weight" not in keys  # the tied head is stored once, as tok_emb
    torch.manual_seed(1)
    fresh = GPT(tiny_model_cfg)
    ckpt.load_weights(fresh, final / layout.MODEL_FILE)
    assert _same_weights(_weights(fresh), _weights(model))
    assert fresh.lm_head.weight is fresh.tok_emb.weight


def test_keep_last_prunes_old_checkpoints(tmp_path: Path, tiny_model_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    snapshots = {}
    for step in range(1, 6):
        with torch.no_grad():
            model.tok_emb.weight.add_(1.0)
        snapshots[step] = _weights(model)
        ckpt.save_checkpoint(tmp_path, model, _trainer_state(model, step), step == 2, keep_last=2)
    (tmp_path / layout.CHECKPOINTS_DIR / "step_0000009.tmp").mkdir()  # cut short: ignored
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_0000004", "step_0000005"]
    on_disk = sorted(p.name for p in (tmp_path / layout.CHECKPOINTS_DIR).iterdir())
    assert on_disk == ["step_0000004", "step_0000005", "step_0000009.tmp"]
    # the top level mirrors the newest; best/ keeps its weights after its step dir is pruned
    for path, step in (
        (tmp_path / layout.MODEL_FILE, 5),
        (tmp_path / "best" / layout.MODEL_FILE, 2),
    ):
        fresh = GPT(tiny_model_cfg)
        ckpt.load_weights(fresh, path)
        assert _same_weights(_weights(fresh), snapshots[step])
    state = json.loads((tmp_path / layout.STATE_DIR / "state.json").read_text())
    assert state["step"] == 5
    assert (
        ckpt.load_trainer_state(tmp_path / layout.CHECKPOINTS_DIR / "step_0000004")["state"]["step"]
        == 4
    )


def test_truncated_weights_raise_checkpoint_error(
    tmp_path: Path, tiny_model_cfg: ModelConfig
) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    path = tmp_path / layout.MODEL_FILE
    ckpt.save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_weights(GPT(tiny_model_cfg), path)


def test_truncated_trainer_state_raises_checkpoint_error(
    tmp_path: Path, tiny_model_cfg: ModelConfig
) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    final = ckpt.save_checkpoint(tmp_path, model, _trainer_state(model, 1), False, keep_last=1)
    state_file = final / layout.STATE_DIR / layout.STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_trainer_state(final)


def test_weights_of_another_shape_raise_checkpoint_error(
    tmp_path: Path, tiny_model_cfg: ModelConfig
) -> None:
    torch.manual_seed(0)
    path = tmp_path / layout.MODEL_FILE
    ckpt.save_weights(GPT(tiny_model_cfg), path)
    wider = dataclasses.replace(tiny_model_cfg, n_embd=64)
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.load_weights(GPT(wider), path)


def test_vocab_mismatch_between_tokenizer_and_config_raises(
    tmp_path: Path, tiny_model_cfg: ModelConfig
) -> None:
    tokenizer = Tokenizer.train_char(["abcdefghij"])
    assert tokenizer.vocab_size != tiny_model_cfg.vocab_size
    cfg = RunConfig(model=tiny_model_cfg)
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg)
    ckpt.write_run_files(tmp_path, cfg, tokenizer)
    ckpt.save_checkpoint(tmp_path, model, _trainer_state(model, 1), False, keep_last=1)
    with pytest.raises(CheckpointError, match="tokenizer has 12 tokens"):
        load_run(tmp_path)
    # the same run with a matching tokenizer loads
    matching = dataclasses.replace(tiny_model_cfg, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = GPT(matching)
    ckpt.write_run_files(tmp_path, RunConfig(model=matching), tokenizer)
    ckpt.save_checkpoint(tmp_path, model, _trainer_state(model, 2), False, keep_last=1)
    _, loaded, _ = load_run(tmp_path)
    assert _same_weights(_weights(loaded), _weights(model))


def test_validation_loss_is_the_per_token_mean_over_batches_of_different_sizes(
    tiny_model_cfg: ModelConfig,
) -> None:
    """Prompt -> completion batches score different numbers of tokens: val_loss must be
    Σ CE / Σ tokens over all of them, not the mean of the batch means."""
    torch.manual_seed(0)
    model = GPT(tiny_model_cfg).eval()
    with torch.no_grad():  # sharper logits: per-token losses that differ between batches
        model.lm_head.weight.mul_(40)
    g = torch.Generator().manual_seed(3)
    windows = torch.randint(0, tiny_model_cfg.vocab_size, (2, 4, 9), generator=g)
    batches = []
    for window, unscored in zip(windows, (7, 1), strict=True):  # 4 x 1 and 4 x 7 scored tokens
        targets = window[:, 1:].clone()
        targets[:, :unscored] = IGNORE_INDEX
        batches.append(Batch(inputs=window[:, :-1], targets=targets))
    cfg = TrainConfig(max_steps=1, warmup_steps=0, progress=False)
    trainer = Trainer(model, build_optimizer(model, cfg), lambda s, m: batches[0], cfg, clm_loss)
    got = trainer._mean_loss(model, batches)["val_loss"]
    with torch.no_grad():
        logits = torch.cat([model(b.inputs) for b in batches]).flatten(0, 1)
        targets = torch.cat([b.targets for b in batches]).flatten()
        expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / 32
        batch_means = [clm_loss(model, b).item() for b in batches]
    assert got == pytest.approx(expected.item(), rel=1e-5)
    assert abs(got - sum(batch_means) / 2) > 0.01  # the two means differ on this data
