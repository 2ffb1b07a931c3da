"""`lmforge pretrain`: train a new model from a config on prepared data, or resume a run."""

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig
from lmforge.config.load import resume_config
from lmforge.data.sources import open_data
from lmforge.errors import ConfigError, DataError
from lmforge.jobs.run_control import check_new_run_dir, main_rank_lock, newest_checkpoint
from lmforge.jobs.session import train
from lmforge.rundir import layout
from lmforge.rundir.load import read_run_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import launched_rank


def pretrain(cfg: RunConfig, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Train a new model from cfg into run directory `out` (locked while it trains)."""
    with main_rank_lock(out, "lmforge pretrain"):
        return _pretrain(cfg, out, overwrite)


def _pretrain(cfg: RunConfig, out: Path, overwrite: bool) -> dict[str, Any]:
    if launched_rank() == 0:
        check_new_run_dir(out, overwrite)
    shards, _ = open_data(cfg)
    if cfg.model.vocab_size == 0:
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=shards.vocab_size))
    elif cfg.model.vocab_size != shards.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} but the data's tokenizer has "
            f"{shards.vocab_size} tokens; drop model.vocab_size (0 takes it from the data)"
        )
    if out.exists() and overwrite and launched_rank() == 0:
        shutil.rmtree(out)
    return train(cfg, out, resume_from=None)


def resume(run_dir: Path, sets: list[str]) -> dict[str, Any]:
    """Continue a run from its newest checkpoint, exactly (or start over a run stopped before
    its first checkpoint); `sets` may change train.* and data.*."""
    with main_rank_lock(run_dir, "lmforge pretrain --resume"):
        return _resume(run_dir, sets)


def _resume(run_dir: Path, sets: list[str]) -> dict[str, Any]:
    cfg = resume_config(read_run_config(run_dir), sets)
    run_tokenizer = Tokenizer.load(run_dir / layout.TOKENIZER_FILE)
    _, data_tokenizer = open_data(cfg)
    if run_tokenizer.sha256() != data_tokenizer.sha256():
        raise DataError(
            f"{cfg.data.dir} was tokenized with another tokenizer than {run_dir} was trained "
            "with; resume on data prepared with the run's tokenizer.json (--tokenizer-file)"
        )
    return train(cfg, run_dir, resume_from=newest_checkpoint(run_dir))
