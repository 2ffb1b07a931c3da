"""What the `compress` verbs do: run directory in, smaller run directory out, and a report."""

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from lmforge.compress.prune import (
    magnitude_prune,
    make_permanent,
    prune_heads,
    prune_neurons,
    sparsity_by_layer,
)
from lmforge.compress.quantize import (
    int8_parts,
    int8_tensors,
    linear_weight_bytes,
    quantize_int8,
    quantized_layers,
)
from lmforge.config import RunConfig, SamplingConfig
from lmforge.config.load import resume_config, student_config
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.evaluate import score_text
from lmforge.generation.loop import generate_tokens, require_causal_lm
from lmforge.jobs.run_control import check_new_run_dir, main_rank_lock, newest_checkpoint
from lmforge.jobs.session import TrainingPlan, train
from lmforge.plots import plot_compression_report
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.files import read_text, staged_directory, write_text_atomic
from lmforge.rundir.layout import PRUNING_FILE, QUANTIZATION_FILE, QUANTIZED_WEIGHTS
from lmforge.rundir.load import load_run, read_run_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import launched_rank
from lmforge.train.evaluators import lm_metrics
from lmforge.train.objectives import check_distillation, distillation_objective
from lmforge.train.runtime import choose_device

log = logging.getLogger(__name__)
STRUCTURES = ("heads", "neurons")


def _refuse_quantized(run_dir: Path, what: str) -> None:
    if (run_dir / QUANTIZATION_FILE).is_file():
        raise CheckpointError(f"{run_dir} is already int8; {what} its float run instead")


def quantize_run(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """An int8 copy of a run: every linear layer quantized per output channel."""
    with main_rank_lock(out, "lmforge compress quantize"):
        return _quantize(run_dir, out, overwrite)


def _quantize(run_dir: Path, out: Path, overwrite: bool) -> dict[str, Any]:
    _refuse_quantized(run_dir, "quantize")
    cfg, model, tokenizer = load_run(run_dir)
    quantized, scheme = quantize_int8(model)
    with staged_directory(out, overwrite) as tmp:
        ckpt.write_run_files(tmp, cfg, tokenizer)
        save_file(int8_tensors(quantized), str(tmp / QUANTIZED_WEIGHTS), metadata={"format": "pt"})
        record = {"scheme": scheme, "bits": 8, "layers": quantized_layers(quantized)}
        write_text_atomic(tmp / QUANTIZATION_FILE, json.dumps(record, indent=2))
    before, after = run_size_bytes(run_dir), run_size_bytes(out)
    linear_before, linear_after = linear_weight_bytes(model), linear_weight_bytes(quantized)
    return {
        "out": str(out),
        "scheme": scheme,
        "layers": len(record["layers"]),
        "model_bytes_before": before,
        "model_bytes_after": after,
        "shrink": before / max(after, 1),
        "run_bytes_before": directory_bytes(run_dir),
        "run_bytes_after": directory_bytes(out),
        "linear_bytes_before": linear_before,
        "linear_bytes_after": linear_after,
        "linear_shrink": linear_before / max(linear_after, 1),
    }


def _pruned(run_dir: Path, settings: dict[str, Any]) -> tuple[RunConfig, nn.Module, Tokenizer]:
    """The run's model pruned as settings say (deterministic: the same masks every time, so a
    resumed recovery rebuilds exactly the model it checkpointed)."""
    cfg, model, tokenizer = load_run(run_dir)
    require_causal_lm(model)
    if settings["method"] == "heads":
        model = prune_heads(model, settings["sparsity"])
    elif settings["method"] == "neurons":
        model = prune_neurons(model, settings["sparsity"])
    else:
        magnitude_prune(model, settings["sparsity"])
    return replace(cfg, model=model.cfg), model, tokenizer


def _recovery_config(cfg: RunConfig, settings: dict[str, Any]) -> RunConfig:
    """Recovery fine-tuning: causal LM on the data, a constant lr, clipped, logged every step."""
    steps = settings["finetune_steps"]
    train = replace(
        cfg.train,
        objective="clm",
        max_steps=steps,
        lr=settings["lr"],
        min_lr=settings["lr"],
        warmup_steps=0,
        eval_interval=steps,
        checkpoint_interval=max(1, min(cfg.train.checkpoint_interval or steps, steps)),
        log_interval=1,
        grad_clip=1.0,
        patience=0,
        best_metric="val_loss",
    )
    cfg = replace(cfg, train=train, data=replace(cfg.data, dir=settings["data_dir"]))
    sets = settings.get("sets", [])
    if any(not s.strip().startswith(("train.", "dist.")) for s in sets):
        raise ConfigError("compress prune --set takes train.* and dist.* keys (the recovery's)")
    return resume_config(cfg, sets)  # the model stays as pruned


def prune_run(
    run_dir: Path,
    out: Path,
    sparsity: float,
    structured: str | None = None,
    finetune_steps: int = 0,
    data_dir: Path | None = None,
    lr: float = 1e-4,
    overwrite: bool = False,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Prune a GPT run (magnitude, or whole heads / neurons), optionally fine-tune to recover
    (through the training session: checkpointed, resumable with resume_prune)."""
    with main_rank_lock(out, "lmforge compress prune"):
        _refuse_quantized(run_dir, "prune")
        if structured not in (None, *STRUCTURES):
            raise ConfigError(f"--structured must be one of {STRUCTURES}; got {structured!r}")
        if finetune_steps < 0:
            raise ConfigError("--finetune-steps must be >= 0")
        if not 0.0 < sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in (0, 1), e.g. 0.5; got {sparsity}")
        source = data_dir or (read_run_config(run_dir).data.dir or None)
        if finetune_steps and source is None:
            raise ConfigError("recovery fine-tuning needs --data DIR (made by `lmforge prepare`)")
        settings = {
            "source_run": str(run_dir),
            "method": structured or "magnitude",
            "sparsity": sparsity,
            "finetune_steps": finetune_steps,
            "lr": lr,
            "data_dir": str(source) if source else "",
            "sets": list(sets or []),  # train.*/dist.* overrides of the recovery
        }
        if not finetune_steps:
            cfg, model, tokenizer = _pruned(run_dir, settings)
            with staged_directory(out, overwrite) as tmp:
                return _finish_pruning(tmp, out, settings, cfg, model, tokenizer, None)
        if launched_rank() == 0:
            check_new_run_dir(out, overwrite)
            if out.exists() and overwrite:
                shutil.rmtree(out)
        return _recover(out, settings, None)


def resume_prune(out: Path) -> dict[str, Any]:
    """Continue the recovery fine-tune of a pruned run from its newest checkpoint."""
    with main_rank_lock(out, "lmforge compress prune --resume"):
        return _resume_prune(out)


def _resume_prune(out: Path) -> dict[str, Any]:
    resume_from = newest_checkpoint(out)
    try:
        record = json.loads((out / PRUNING_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{out}/{PRUNING_FILE} is unreadable ({exc})") from None
    return _recover(out, record["settings"], resume_from)


def _recover(out: Path, settings: dict[str, Any], resume_from: Path | None) -> dict[str, Any]:
    cfg, _, tokenizer = _pruned(Path(settings["source_run"]), settings)
    cfg = _recovery_config(cfg, settings)
    log.info("recovery fine-tune: %d steps on %s", settings["finetune_steps"], settings["data_dir"])
    record = {"settings": settings, "finished": False}
    plan = TrainingPlan(
        build=lambda: _pruned(Path(settings["source_run"]), settings)[1],
        run_files=lambda run_dir: write_text_atomic(
            run_dir / PRUNING_FILE, json.dumps(record, indent=2)
        ),
    )
    summary = train(cfg, out, resume_from, plan)
    if not summary["is_main"]:
        return summary
    _, model, _ = _pruned(Path(settings["source_run"]), settings)
    ckpt.load_weights(model, out / ckpt.weights_name(model))
    return _finish_pruning(out, out, settings, cfg, model, tokenizer, summary)


def _finish_pruning(
    directory: Path,
    out: Path,
    settings: dict[str, Any],
    cfg: RunConfig,
    model: nn.Module,
    tokenizer: Tokenizer,
    summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """Masks folded into the weights; the run's config, weights and pruning.json report."""
    params_before = load_run(Path(settings["source_run"]))[1].num_params()
    make_permanent(model)
    report = {
        "method": settings["method"],
        "sparsity": settings["sparsity"],
        "params_before": params_before,
        "params_after": model.num_params(),
        "finetune_steps": settings["finetune_steps"],
        "finetune_loss": [summary["first_loss"], summary["last_loss"]] if summary else None,
        "zero_fraction_by_layer": sparsity_by_layer(model),
    }
    ckpt.write_run_files(directory, cfg, tokenizer)
    ckpt.save_weights(model, directory / layout.MODEL_FILE)
    record = {**report, "settings": settings, "finished": True}
    write_text_atomic(directory / PRUNING_FILE, json.dumps(record, indent=2))
    steps = summary["steps"] if summary else 0  # recovery steps trained
    return {"out": str(out), "source_run": settings["source_run"], "steps": steps, **report}


# ---------------------------------------------------------------- report


def run_size_bytes(run_dir: Path) -> int:
    """Bytes of the weights a run loads (float or int8 safetensors)."""
    for name in (QUANTIZED_WEIGHTS, layout.MODEL_FILE):
        if (run_dir / name).is_file():
            return (run_dir / name).stat().st_size
    raise CheckpointError(f"{run_dir} has no weights file")


def directory_bytes(path: Path) -> int:
    """Bytes of every file under a directory (a whole run: weights, tokenizer, checkpoints)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def count_parameters(model: nn.Module) -> int:
    """Non-zero parameters, int8 weights included and tied tensors once (pruned zeros drop out)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += int((p != 0).sum())
    for module in model.modules():  # int8 layers keep their weights outside parameters()
        parts = int8_parts(module)
        if parts is not None:
            total += int((parts[0] != 0).sum()) + (0 if parts[2] is None else parts[2].numel())
    return total


def decode_speed(model: nn.Module, prompt: list[int], new_tokens: int = 64) -> float:
    """Greedy decoding tokens/s (the best of two runs after a warm-up)."""
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    best = float("inf")
    for attempt in range(3):
        start = time.perf_counter()
        count = sum(1 for _ in generate_tokens(model, prompt, sampling))
        if attempt:
            best = min(best, time.perf_counter() - start)
    return count / best


def report_row(run_dir: Path, text: str, stride: int | None = None) -> dict[str, Any]:
    """One run's size, parameters, perplexity, bits per byte and decoding speed on a text."""
    cfg, model, tokenizer = load_run(run_dir)
    require_causal_lm(model)
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    score = score_text(model, ids, len(text.encode("utf-8")), cfg.model.block_size, stride)
    prompt = ids[-min(16, len(ids)) :]
    return {
        "run": str(run_dir),
        "size_mb": run_size_bytes(run_dir) / 1e6,
        "parameters": count_parameters(model),
        "perplexity": score.perplexity,
        "bits_per_byte": score.bits_per_byte,
        "decode_tokens_per_s": decode_speed(model, prompt),
        "score_tokens_per_s": score.tokens_per_s,
    }


def compress_report(
    run_dirs: list[Path], text_file: Path, plot: Path, stride: int | None = None
) -> list[dict[str, Any]]:
    """Rows of report_row for every run, and the bar-chart PNG of them."""
    if not run_dirs:
        raise ConfigError("give at least one run directory to compare")
    text = read_text(text_file)
    rows = [report_row(run_dir, text, stride) for run_dir in run_dirs]
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_compression_report(rows, plot)
    return rows


# ---------------------------------------------------------------- distill


def distill_run(
    teacher_dir: Path,
    student_config_file: Path,
    data_dir: Path,
    out: Path,
    sets: list[str],
    temperature: float = 2.0,
    alpha: float = 0.5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pretrain a student on data_dir with the distillation loss against a teacher run."""
    with main_rank_lock(out, "lmforge compress distill"):
        check_distillation(temperature, alpha)
        tokenizer = Tokenizer.load(teacher_dir / layout.TOKENIZER_FILE)
        data_tokenizer = data_dir / layout.TOKENIZER_FILE
        if not data_tokenizer.is_file():
            raise DataError(f"{data_dir} is not a prepared data directory (no tokenizer.json)")
        if Tokenizer.load(data_tokenizer).sha256() != tokenizer.sha256():
            teacher_tokenizer = teacher_dir / layout.TOKENIZER_FILE
            raise DataError(
                f"teacher and student must share the tokenizer, but {data_dir} was prepared with "
                f"another one; prepare it with --tokenizer-file {teacher_tokenizer}"
            )
        cfg = student_config(student_config_file, sets, data_dir, tokenizer.vocab_size)
        if launched_rank() == 0:
            check_new_run_dir(out, overwrite)
            if out.exists() and overwrite:
                shutil.rmtree(out)
        settings = {"teacher": str(teacher_dir), "temperature": temperature, "alpha": alpha}
        return _distill(cfg, out, settings, None)


def resume_distill(out: Path, sets: list[str]) -> dict[str, Any]:
    """Continue a distillation from its newest checkpoint, with the same teacher."""
    with main_rank_lock(out, "lmforge compress distill --resume"):
        return _resume_distill(out, sets)


def _resume_distill(out: Path, sets: list[str]) -> dict[str, Any]:
    resume_from = newest_checkpoint(out)
    cfg = resume_config(read_run_config(out), sets)
    try:
        settings = json.loads((out / layout.DISTILLATION_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{out}/{layout.DISTILLATION_FILE} is unreadable ({exc})") from None
    return _distill(cfg, out, settings, resume_from)


def _distill(
    cfg: RunConfig, out: Path, settings: dict[str, Any], resume_from: Path | None
) -> dict[str, Any]:
    _, teacher, _ = load_run(Path(settings["teacher"]))
    require_causal_lm(teacher)
    teacher.to(choose_device(cfg.train.device))
    objective = distillation_objective(teacher, settings["temperature"], settings["alpha"])
    plan = TrainingPlan(
        objective=(objective, lm_metrics),
        run_files=lambda run_dir: write_text_atomic(
            run_dir / layout.DISTILLATION_FILE, json.dumps(settings, indent=2)
        ),
    )
    summary = train(cfg, out, resume_from, plan)
    return {**summary, **settings}  # teacher, temperature, alpha
