"""Files and directories lmforge writes get the modes the umask says (0644/0755 under 022,
0600/0700 under 077), although they are written as temporaries (0600/0700) and renamed."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.model.gpt import GPT
from lmforge.plots import plot_loss_curves
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import append_text, current_umask, staged_directory
from lmforge.train.optim import build_optimizer
from lmforge.train.trainer import Trainer

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=61)


@pytest.fixture(params=[0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_modes(root: Path, umask: int) -> None:
    """Every file 0o666 & ~umask, every directory 0o777 & ~umask, root included."""
    paths = [root, *root.rglob("*")]
    assert len(paths) > 1
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert _mode(path) == expected, f"{path}: {oct(_mode(path))} != {oct(expected)}"


def test_the_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_a_checkpoint_and_its_mirror_follow_the_umask(tmp_path: Path, umask: int) -> None:
    torch.manual_seed(0)
    model = GPT(TINY)
    cfg = TrainConfig(max_steps=10, warmup_steps=0, progress=False)
    trainer = Trainer(model, build_optimizer(model, cfg), lambda s, m: None, cfg, lambda m, b: 0)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run, model, trainer.state_dict(), True, keep_last=2)
    append_text(run / layout.METRICS_FILE, '{"step": 1}\n')
    plot_loss_curves([(1, 2.0), (2, 1.5)], [(2, 1.7)], run / layout.LOSS_PLOT)
    names = {p.relative_to(run).as_posix() for p in run.rglob("*")}
    assert {layout.MODEL_FILE, f"{layout.STATE_DIR}/{layout.STATE_FILE}", "best"} <= names
    _assert_modes(run, umask)


def test_a_staged_run_directory_follows_the_umask(tmp_path: Path, umask: int) -> None:
    with staged_directory(tmp_path / "out", overwrite=False) as staged:
        (staged / layout.CONFIG_FILE).write_text("{}")
    _assert_modes(tmp_path / "out", umask)


def test_prepared_data_and_its_tokenizer_follow_the_umask(
    tmp_path: Path, corpus_dir: Path, umask: int
) -> None:
    from lmforge.jobs.prepare import PrepareOptions, prepare

    out = tmp_path / "data"
    prepare(PrepareOptions(inputs=[str(corpus_dir)], out=out, tokenizer="char"))
    assert (out / layout.TOKENIZER_FILE).is_file()
    assert (out / "meta.json").is_file()
    _assert_modes(out, umask)
