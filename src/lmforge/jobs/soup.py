"""finetune.soup = N: N classifiers fine-tuned from one base, their weights averaged into one.

Wortsman et al. (2022), "Model soups": fine-tunes of one pretrained model that start from the
same weights and differ only in their batch order and dropout stay in one basin of the loss,
so the average of their weights,

    θ_soup = (1/N) · Σ_k θ_k,

scores like an ensemble of the N at the cost of one model (predict, evaluate and serve read a
single weights file, as without a soup).

Member 0 is the run itself (RUN/metrics.jsonl, RUN/best/, ...). Member k >= 1 trains in
RUN/soup/member_k/ with train.seed + k drawing its batch order and dropout, from the same
classifier head member 0 started from (drawn with train.seed). Each member's kept weights (its
best epoch on valid) go to RUN/soup/member_k/model.safetensors with done.json beside them, so
`--resume RUN` skips the members that finished and resumes an unfinished one from its newest
checkpoint. Integer buffers (the n-gram codes) are the base's in every member and are kept.
"""

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.config import RunConfig
from lmforge.data.classify import ClassificationData, classification_batches
from lmforge.errors import CheckpointError, ConfigError
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import atomic_path, write_text_atomic
from lmforge.rundir.load import classifier_model
from lmforge.train.evaluators import ClassifierEval

log = logging.getLogger(__name__)

SOUP_DIR = "soup"
DONE_FILE = "done.json"

# A member's training run: (its config, its run directory, the checkpoint to resume from,
# the seed the classifier head is drawn with) -> the weights file it keeps and its summary.
MemberRun = Callable[[RunConfig, Path, Path | None, int], tuple[Path, dict[str, Any]]]


def member_dir(out: Path, k: int) -> Path:
    return out / SOUP_DIR / f"member_{k}"


def finished(out: Path, k: int) -> dict[str, Any] | None:
    """Member k's record (its best validation metrics) if it finished, else None."""
    done = member_dir(out, k) / DONE_FILE
    return json.loads(done.read_text(encoding="utf-8")) if done.is_file() else None


def mark_finished(
    out: Path, k: int, weights: Path, best: dict[str, Any], summary: dict[str, Any] | None = None
) -> None:
    """Keep member k's weights and record, with the run's summary for member 0 (weights first:
    done.json means both are there)."""
    directory = member_dir(out, k)
    directory.mkdir(parents=True, exist_ok=True)
    kept = directory / layout.MODEL_FILE
    if weights.resolve() != kept.resolve():
        with atomic_path(kept) as tmp:
            shutil.copyfile(weights, tmp)
    record: dict[str, Any] = {n: v for n, v in best.items() if n.startswith("val_") or n == "step"}
    if summary is not None:
        record["summary"] = summary
    write_text_atomic(directory / DONE_FILE, json.dumps(record, default=str))
    if k > 0:  # a finished member needs only its kept weights
        for name in (layout.CHECKPOINTS_DIR, layout.BEST_DIR, layout.STATE_DIR):
            shutil.rmtree(directory / name, ignore_errors=True)


def train_members(cfg: RunConfig, out: Path, run_member: MemberRun) -> list[dict[str, Any]]:
    """Train members 1..N-1 that have not finished (resuming a started one); their records."""
    records = []
    for k in range(1, cfg.finetune.soup):
        record = finished(out, k)
        if record is None:
            directory = member_dir(out, k)
            member_cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + k))
            checkpoints = ckpt.list_checkpoints(directory) if directory.is_dir() else []
            resume_from = checkpoints[-1] if checkpoints else None
            weights, best = run_member(member_cfg, directory, resume_from, cfg.train.seed)
            mark_finished(out, k, weights, best)
            record = finished(out, k)
        records.append(record)
    return records


def average_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of every floating-point tensor over the files; other tensors (integer buffers)
    must be equal in all of them and are kept as they are."""
    total = load_file(str(files[0]))
    for path in files[1:]:
        tensors = load_file(str(path))
        if set(tensors) != set(total):
            raise CheckpointError(f"{path} holds other tensors than {files[0]}: not one soup")
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                total[name] = total[name].double() + tensor.double()
            elif not torch.equal(tensor, total[name]):
                raise CheckpointError(f"{path}: buffer {name} differs from {files[0]}'s")
    dtypes = {name: t.dtype for name, t in load_file(str(files[0])).items()}
    return {
        name: (t / len(files)).to(dtypes[name]) if t.is_floating_point() else t
        for name, t in total.items()
    }


def check_soup(cfg: RunConfig, processes: int) -> None:
    """Refuse a soup where averaging weights is not what it means."""
    if cfg.finetune.soup > 1 and cfg.lora.r:
        raise ConfigError(
            "finetune.soup averages whole models; LoRA adapters (lora.r > 0) do not average "
            "into the mean update: drop one of them"
        )
    if cfg.finetune.soup > 1 and processes > 1:
        raise ConfigError("finetune.soup trains its members in one process: drop --nproc")


def soup_of(
    cfg: RunConfig,
    out: Path,
    data: ClassificationData,
    records: list[dict[str, Any]],
    build_cfg: RunConfig,
) -> dict[str, Any]:
    """Average every member into RUN/model.safetensors and evaluate the soup on valid: its
    record, as an epoch's (member 0's best step), with each member's valid accuracy."""
    path = write_soup(out, cfg.finetune.soup)
    model = classifier_model(build_cfg, len(data.labels), base_weights=False)
    ckpt.load_weights(model, path)
    batches = classification_batches(data.valid, cfg.train.batch_size)
    scores = ClassifierEval(data.labels)(model, batches)
    first = finished(out, 0) or {}
    accuracies = [first.get("val_accuracy"), *(r.get("val_accuracy") for r in records)]
    log.info(
        "soup of %d members: valid accuracy %.4f (members %s)",
        len(accuracies),
        scores["val_accuracy"],
        ", ".join(f"{a:.4f}" for a in accuracies if a is not None),
    )
    return {**scores, "step": first.get("step", 0), "soup_member_accuracy": accuracies}


def write_soup(out: Path, members: int) -> Path:
    """Average the members' kept weights into RUN/model.safetensors (atomically)."""
    files = [member_dir(out, k) / layout.MODEL_FILE for k in range(members)]
    soup = average_weights(files)
    target = out / layout.MODEL_FILE
    with atomic_path(target) as tmp:
        save_file(soup, str(tmp), metadata={"format": "pt", "soup": str(members)})
    return target
