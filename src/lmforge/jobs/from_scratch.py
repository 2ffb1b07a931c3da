"""`finetune classify --from-scratch CONFIG`: a classifier with no pretrained base to start from.

The task's own training texts (never the validation file, never a label) train a tokenizer and
a new base of CONFIG's model, which then becomes the classifier's base. One config describes
the whole recipe: its model.* and data.* make the base; its train.* trains both stages, each
setting the keys that are its own (the base: objective mlm for a BERT or clm for a GPT, and
finetune.pretrain_steps steps, or CONFIG's train.max_steps; the classifier: steps from
finetune.epochs, warmup, evaluation, best metric); its finetune.* is the classifier's. Flags,
then --config and --set, come last; their train.* reach both stages too (train.seed, dtype,
device, progress, lr, ...).

Everything lives in the classify run directory, so `--resume RUN` continues where it stopped:

    RUN/from_scratch/train_text.txt  the training texts, one per line
    RUN/from_scratch/data/           their tokenizer and token shards (lmforge prepare)
    RUN/from_scratch/pretrain.json   the base's resolved config
    RUN/from_scratch/base/           the base: a pretraining run, resumed if cut short;
                                     done.json marks it finished
"""

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig, from_dict, to_dict
from lmforge.config.load import apply_overrides, finetune_config, read_config_file
from lmforge.data.classify import Example, read_examples
from lmforge.errors import ConfigError, LMForgeError
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain, resume
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import write_text_atomic
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import launched_world_size

log = logging.getLogger(__name__)

SCRATCH_DIR = "from_scratch"
DONE_FILE = "done.json"
DEFAULT_VOCAB = 8000  # the tokenizer's size when CONFIG leaves model.vocab_size at 0
# the keys of train.* each stage sets for itself (the rest of CONFIG's train.* reaches both)
_PRETRAIN_OWN = ("objective", "max_steps", "eval_interval", "checkpoint_interval", "best_metric")
_CLASSIFY_OWN = (*_PRETRAIN_OWN, "warmup_steps", "eval_batches")


def scratch_dir(out: Path) -> Path:
    return out / SCRATCH_DIR


def stopped_while_preparing(out: Path) -> bool:
    """A --from-scratch run stopped before the classify run itself began (its config.json is
    written once the texts are prepared): the directory holds nothing but our from_scratch/
    stage, which a new start redoes from the beginning anyway."""
    return (
        out.is_dir()
        and not out.is_symlink()
        and [entry.name for entry in out.iterdir()] == [SCRATCH_DIR]
        and (out / SCRATCH_DIR).is_dir()
    )


def start_from_scratch(
    config: Path, flags: Mapping[str, Any], sets: list[str], out: Path, path: Path | None = None
) -> tuple[RunConfig, Tokenizer]:
    """Prepare the training texts and resolve both configs; returns the classify run's config
    (finetune.base: the base still to be trained) and the new tokenizer. The classifier's
    settings: CONFIG's, then the --config file's (path), then sets."""
    if launched_world_size() > 1:
        raise LMForgeError("--from-scratch runs in one process; drop --nproc (or torchrun)")
    user = read_config_file(config)
    root = scratch_dir(out)
    examples = read_examples(
        flags["train_file"],
        flags.get("text_column", "sentence"),
        pair_column=flags.get("text_pair_column") or None,
    )
    tokenizer = _prepare(root, examples, user)
    given = apply_overrides(read_config_file(path) if path else {}, sets)
    both = [f"train.{k}={json.dumps(v)}" for k, v in (given.get("train") or {}).items()]
    both = [item for item in both if item.split("=")[0][6:] not in _PRETRAIN_OWN]
    steps = int(flags.get("pretrain_steps") or 0)
    base = _base_config(apply_overrides(user, both), root, tokenizer, steps)
    write_text_atomic(root / "pretrain.json", json.dumps(to_dict(base), indent=2))
    stage = [*_classify_sets(user), *(_as_sets(read_config_file(path)) if path else []), *sets]
    finetune = {**flags, "from_scratch": str(config), "pretrain_steps": base.train.max_steps}
    cfg = finetune_config(base, root / "base", "classify", None, stage, finetune)
    return cfg, tokenizer


def _prepare(root: Path, examples: list[Example], user: dict[str, Any]) -> Tokenizer:
    """A tokenizer of the training texts and their token shards (BERT: wordpiece with word
    starts from jieba where the texts are Chinese and jieba is installed; GPT: byte-level BPE)."""
    model = user.get("model") or {}
    arch = model.get("arch", "gpt")
    lines = [e.text if e.pair is None else f"{e.text} {e.pair}" for e in examples]
    text = root / "train_text.txt"
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, "".join(line.replace("\n", " ") + "\n" for line in lines))
    prepare(
        PrepareOptions(
            inputs=[str(text)],
            out=root / "data",
            tokenizer="wordpiece" if arch == "bert" else "bpe",
            vocab_size=int(model.get("vocab_size") or DEFAULT_VOCAB),
            documents="line",
            min_chars=1,
            val_fraction=0.05,
            segmenter=_segmenter(arch, lines),
            overwrite=True,
        )
    )
    return Tokenizer.load(root / "data" / layout.TOKENIZER_FILE)


def _segmenter(arch: str, lines: list[str]) -> str:
    """jieba for Chinese text under a BERT when jieba is installed (whole-word masking)."""
    if arch != "bert" or not any("\u4e00" <= ch <= "\u9fff" for line in lines[:200] for ch in line):
        return "none"
    try:
        import jieba  # noqa: F401
    except ImportError:
        return "none"
    return "jieba"


def _base_config(user: dict[str, Any], root: Path, tokenizer: Tokenizer, steps: int) -> RunConfig:
    values = apply_overrides(user, [])
    values.pop("finetune", None)
    train = dict(values.get("train") or {})
    steps = steps or int(train.get("max_steps") or 0)
    if steps <= 0:
        raise ConfigError("--from-scratch needs --pretrain-steps N (or train.max_steps in CONFIG)")
    arch = (values.get("model") or {}).get("arch", "gpt")
    train.update(
        objective="mlm" if arch == "bert" else "clm",
        max_steps=steps,
        eval_interval=steps,
        checkpoint_interval=max(1, min(100, steps // 4)),
        best_metric="val_loss",
    )
    train.setdefault("warmup_steps", min(100, steps // 10))
    model = {**(values.get("model") or {}), "vocab_size": tokenizer.vocab_size}
    data = {**(values.get("data") or {}), "dir": str(root / "data")}
    return from_dict(RunConfig, {**values, "model": model, "train": train, "data": data})


def _classify_sets(user: dict[str, Any]) -> list[str]:
    """CONFIG's train.* (less what the classifier sets itself) and finetune.*, as --set items."""
    train = {k: v for k, v in (user.get("train") or {}).items() if k not in _CLASSIFY_OWN}
    return _as_sets({"train": train, "finetune": user.get("finetune") or {}})


def _as_sets(sections: Mapping[str, Any]) -> list[str]:
    """A config's sections as `section.key=value` items (values as JSON, which YAML reads)."""
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section, keys in sections.items()
        if isinstance(keys, dict)
        for key, value in keys.items()
    ]


def scratch_base(out: Path) -> None:
    """Train the from-scratch base of classify run `out`: now, from its newest checkpoint if it
    was cut short, or not at all once done."""
    root = scratch_dir(out)
    base, done = root / "base", root / "base" / DONE_FILE
    if done.is_file():
        log.info("from scratch: reusing the base in %s", base)
        return
    cfg = from_dict(RunConfig, json.loads((root / "pretrain.json").read_text(encoding="utf-8")))
    log.info(
        "from scratch: pretraining a %s base (%s, %d steps) on the training texts",
        cfg.model.arch,
        cfg.train.objective,
        cfg.train.max_steps,
    )
    if (base / layout.CONFIG_FILE).is_file() and ckpt.list_checkpoints(base):
        resume(base, [])
    else:
        shutil.rmtree(base, ignore_errors=True)
        pretrain(cfg, base)
    write_text_atomic(done, json.dumps({"steps": cfg.train.max_steps}))
