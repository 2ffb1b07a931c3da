"""Domain-adaptive pretraining before `finetune classify --pretrain-steps N`.

The base keeps learning its own objective (MLM for a BERT, CLM for a GPT) for N steps on the
task's training texts, with its own tokenizer, through the same session as `finetune lm`; the
classifier then starts from the adapted weights. The texts come from the training file only,
never from the validation file or the labels. Everything lives in the classify run directory:

    RUN/domain_adapt/data/   the training texts as token shards (base tokenizer)
    RUN/domain_adapt/        a complete run (config, checkpoints, model), resumed where it
                             stopped; done.json marks it finished, so a resumed classify run
                             does not adapt twice.
"""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig, from_dict, to_dict
from lmforge.config.load import LM_TRAIN_DEFAULTS
from lmforge.data.classify import Example
from lmforge.data.corpus import Document
from lmforge.data.shards import META_FILE, TokenShards, write_shards
from lmforge.errors import DataError
from lmforge.jobs.session import TrainingPlan, train
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import write_text_atomic
from lmforge.rundir.load import read_run_config
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ADAPT_DIR = "domain_adapt"
DATA_DIR = "data"
DONE_FILE = "done.json"


def adapted_base(
    cfg: RunConfig, out: Path, examples: list[Example], tokenizer: Tokenizer, build: Any
) -> Path:
    """The run directory of the base after cfg.finetune.pretrain_steps steps on the examples'
    texts (their pairs too): trained now, resumed if cut short, reused if finished.

    build(adapt_cfg) returns the session's model builder for the adaptation config (the base's
    weights, as `finetune lm` loads them).
    """
    run = out / ADAPT_DIR
    steps = cfg.finetune.pretrain_steps
    done = run / DONE_FILE
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("steps") == steps:
        log.info("domain-adaptive pretraining: reusing %s (%d steps)", run, steps)
        return run
    data = _write_data(run / DATA_DIR, examples, tokenizer, cfg)
    adapt_cfg = adapt_config(cfg, data)
    checkpoints = ckpt.list_checkpoints(run) if (run / layout.CONFIG_FILE).is_file() else []
    log.info(
        "domain-adaptive pretraining: %d %s steps on %d training texts",
        steps,
        adapt_cfg.train.objective,
        len(examples),
    )
    plan = TrainingPlan(build=build(adapt_cfg), tokenizer=tokenizer)
    train(adapt_cfg, run, checkpoints[-1] if checkpoints else None, plan)
    write_text_atomic(done, json.dumps({"steps": steps}))
    return run


def adapt_config(cfg: RunConfig, data_dir: Path) -> RunConfig:
    """The base run's config continuing its own objective (mlm without NSP for a BERT: a task
    text is rarely a run of sentences) on data_dir for finetune.pretrain_steps steps."""
    base = read_run_config(Path(cfg.finetune.base))
    steps = cfg.finetune.pretrain_steps
    objective = "mlm" if base.model.arch == "bert" else "clm"
    train_keys = {
        **to_dict(base.train),
        **LM_TRAIN_DEFAULTS,
        "objective": objective,
        "max_steps": steps,
        "warmup_steps": min(LM_TRAIN_DEFAULTS["warmup_steps"], steps // 10),
        "eval_interval": steps,
        # a checkpoint every quarter of the steps, at most every 100: a kill costs little
        "checkpoint_interval": max(1, min(LM_TRAIN_DEFAULTS["checkpoint_interval"], steps // 4)),
        "eval_batches": 4,
        "lr": cfg.finetune.pretrain_lr,
        "seed": cfg.train.seed,
        "dtype": cfg.train.dtype,
        "device": cfg.train.device,
        "progress": cfg.train.progress,
        "best_metric": "val_loss",
    }
    values = {
        "model": to_dict(cfg.model),
        "train": train_keys,
        "data": {**to_dict(base.data), "dir": str(data_dir)},
        "finetune": {"base": cfg.finetune.base},
        "dist": to_dict(cfg.dist),
    }
    return from_dict(RunConfig, values)


def _write_data(
    directory: Path, examples: list[Example], tokenizer: Tokenizer, cfg: RunConfig
) -> Path:
    """Token shards of the training texts (one document per example; a pair's two texts make
    one document of two sentences), written once."""
    if (directory / META_FILE).is_file():
        TokenShards(directory)  # complete and readable, or a DataError
        return directory
    base = read_run_config(Path(cfg.finetune.base))
    segmenter = "none"
    if base.data.whole_word_masking and base.data.dir:
        try:
            segmenter = TokenShards(base.data.dir).segmenter
        except DataError:  # the base's data is gone: no word starts, ## pieces mark words
            segmenter = "none"
    documents = [
        Document(e.text if e.pair is None else f"{e.text}\n{e.pair}", f"train:{i}")
        for i, e in enumerate(examples)
    ]
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_shards(documents, tokenizer, staging, val_fraction=0.05, segmenter=segmenter)
    tokenizer.save(staging / layout.TOKENIZER_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def with_adapted_base(cfg: RunConfig, run: Path) -> RunConfig:
    """cfg whose base weights are read from the adapted run (for building the classifier)."""
    return replace(cfg, finetune=replace(cfg.finetune, base=str(run)))
