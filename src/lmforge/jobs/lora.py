"""`lmforge lora merge`: fold a run's LoRA adapters into its base weights."""

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError
from lmforge.jobs.predict import load_classifier
from lmforge.model.lora import merge_lora, trainable_share
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import staged_directory
from lmforge.rundir.layout import LABELS_FILE
from lmforge.rundir.load import load_run, read_run_config
from lmforge.rundir.lock import run_lock
from lmforge.tokenizer import Tokenizer


def merge_run(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A full run with the adapters of run_dir folded into the base weights: no base needed."""
    with run_lock(out, "lmforge lora merge"):
        return _merge(run_dir, out, overwrite)


def _merge(run_dir: Path, out: Path, overwrite: bool) -> dict[str, Any]:
    cfg = read_run_config(run_dir)
    if not cfg.lora.r:
        raise ConfigError(f"{run_dir} has no LoRA adapters (lora.r=0): nothing to merge")
    tokenizer = Tokenizer.load(run_dir / layout.TOKENIZER_FILE)
    if cfg.train.objective == "classify":
        _, model, _, _ = load_classifier(run_dir)
        extra = [LABELS_FILE]
    else:
        _, model, _ = load_run(run_dir)
        extra = []
    before = trainable_share(model)[1]
    merge_lora(model)
    merged = replace(cfg, lora=replace(cfg.lora, r=0))
    with staged_directory(out, overwrite) as tmp:
        ckpt.write_run_files(tmp, merged, tokenizer)
        ckpt.save_weights(model, tmp / layout.MODEL_FILE)
        for name in extra:
            shutil.copyfile(run_dir / name, tmp / name)
    return {"out": str(out), "params": trainable_share(model)[1], "params_with_adapters": before}
