"""What the `compress` verbs do: run directory in, smaller run directory out, and a report."""

import json
import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.compress.distill import check_distillation, distillation_objective
from lmforge.compress.prune import (
    magnitude_prune,
    make_permanent,
    prune_heads,
    prune_neurons,
    recover,
    sparsity_by_layer,
)
from lmforge.compress.quantize import (
    QUANTIZATION_FILE,
    QUANTIZED_WEIGHTS,
    int8_parts,
    int8_tensors,
    linear_weight_bytes,
    quantize_int8,
    quantized_layers,
)
from lmforge.config import RunConfig, SamplingConfig, load_config
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.data.shards import TokenShards
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.evaluate import score_text
from lmforge.files import check_output_dir, read_utf8, staged_directory, write_text_atomic
from lmforge.generate import generate_tokens, require_causal_lm
from lmforge.plots import plot_compression_report
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import clm_loss
from lmforge.train.runtime import choose_device
from lmforge.training import train

log = logging.getLogger(__name__)
PRUNING_FILE = "pruning.json"
STRUCTURES = ("heads", "neurons")


def _refuse_quantized(run_dir: Path, what: str) -> None:
    if (run_dir / QUANTIZATION_FILE).is_file():
        raise CheckpointError(f"{run_dir} is already int8; {what} its float run instead")


def quantize_run(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """An int8 copy of a run: every linear layer quantized per output channel."""
    _refuse_quantized(run_dir, "quantize")
    cfg, model, tokenizer = ckpt.load_run(run_dir)
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


def _recovery_batches(cfg: RunConfig, data_dir: Path, tokenizer: Tokenizer) -> Any:
    """Endless causal-LM training batches from a prepared data directory (seeded)."""
    shards = TokenShards(data_dir)
    data_tokenizer = Tokenizer.load(data_dir / ckpt.TOKENIZER_FILE)
    if data_tokenizer.sha256() != tokenizer.sha256():
        raise DataError(
            f"{data_dir} was tokenized with another tokenizer than the run; prepare the recovery "
            "data with the run's tokenizer.json"
        )
    window, size, seed = cfg.model.block_size + 1, cfg.train.batch_size, cfg.train.seed
    shards.check_fits("train", window)
    step = 0
    while True:
        generator = step_generator(seed, 7, step)
        yield clm_batch(shards.sample_windows("train", size, window, generator))
        step += 1


def prune_run(
    run_dir: Path,
    out: Path,
    sparsity: float,
    structured: str | None = None,
    finetune_steps: int = 0,
    data_dir: Path | None = None,
    lr: float = 1e-4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prune a GPT run (magnitude, or whole heads / neurons), optionally fine-tune to recover."""
    _refuse_quantized(run_dir, "prune")
    cfg, model, tokenizer = ckpt.load_run(run_dir)
    require_causal_lm(model)
    if structured not in (None, *STRUCTURES):
        raise ConfigError(f"--structured must be one of {STRUCTURES}; got {structured!r}")
    if finetune_steps < 0:
        raise ConfigError("--finetune-steps must be >= 0")
    params_before = model.num_params()
    if structured == "heads":
        model = prune_heads(model, sparsity)
    elif structured == "neurons":
        model = prune_neurons(model, sparsity)
    else:
        magnitude_prune(model, sparsity)
    losses = _recover(cfg, model, tokenizer, finetune_steps, data_dir, lr)
    make_permanent(model)
    cfg = replace(cfg, model=model.cfg)
    report = {
        "method": structured or "magnitude",
        "sparsity": sparsity,
        "params_before": params_before,
        "params_after": model.num_params(),
        "finetune_steps": finetune_steps,
        "finetune_loss": [losses[0], losses[-1]] if losses else None,
        "zero_fraction_by_layer": sparsity_by_layer(model),
    }
    with staged_directory(out, overwrite) as tmp:
        ckpt.write_run_files(tmp, cfg, tokenizer)
        ckpt.save_weights(model, tmp / ckpt.MODEL_FILE)
        write_text_atomic(tmp / PRUNING_FILE, json.dumps(report, indent=2))
    return {"out": str(out), **report}


def _recover(
    cfg: RunConfig,
    model: nn.Module,
    tokenizer: Tokenizer,
    steps: int,
    data_dir: Path | None,
    lr: float,
) -> list[float]:
    if steps == 0:
        return []
    source = data_dir or (Path(cfg.data.dir) if cfg.data.dir else None)
    if source is None:
        raise ConfigError("recovery fine-tuning needs --data DIR (made by `lmforge prepare`)")
    batches = _recovery_batches(cfg, source, tokenizer)
    log.info("recovery fine-tune: %d steps on %s, lr %g", steps, source, lr)
    return recover(model, batches, steps, _clm, lr)


def _clm(model: nn.Module, batch: Batch) -> torch.Tensor:
    return clm_loss(model, batch)


# ---------------------------------------------------------------- report


def run_size_bytes(run_dir: Path) -> int:
    """Bytes of the weights a run loads (float or int8 safetensors)."""
    for name in (QUANTIZED_WEIGHTS, ckpt.MODEL_FILE):
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
    cfg, model, tokenizer = ckpt.load_run(run_dir)
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


def read_text(path: Path) -> str:
    """A UTF-8 text file to score, with the usual clear errors."""
    text = read_utf8(path, "text file")
    if not text.strip():
        raise DataError(f"{path} is empty; give a held-out text to score")
    return text


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


def _student_config(
    student_config: Path, sets: list[str], data_dir: Path, teacher_vocab: int
) -> RunConfig:
    cfg = load_config(student_config, [*sets, f"data.dir={data_dir}"])
    if cfg.model.arch != "gpt" or cfg.train.objective != "clm":
        raise ConfigError("distillation trains a causal GPT student (model.arch=gpt, clm)")
    if cfg.model.vocab_size not in (0, teacher_vocab):
        raise ConfigError(
            f"student model.vocab_size={cfg.model.vocab_size} but the teacher's tokenizer has "
            f"{teacher_vocab} tokens; teacher and student share one tokenizer (drop the key)"
        )
    return replace(cfg, model=replace(cfg.model, vocab_size=teacher_vocab))


def _student_metrics(model: nn.Module, batches: Any) -> dict[str, float]:
    """The student's plain next-token loss on validation batches, comparable to any run's."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        losses = [clm_loss(model, batch.to(device)).item() for batch in batches]
    model.train(was_training)
    loss = sum(losses) / max(len(losses), 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700))}


def distill_run(
    teacher_dir: Path,
    student_config: Path,
    data_dir: Path,
    out: Path,
    sets: list[str],
    temperature: float = 2.0,
    alpha: float = 0.5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pretrain a student on data_dir with the distillation loss against a teacher run."""
    check_distillation(temperature, alpha)
    _, teacher, tokenizer = ckpt.load_run(teacher_dir)
    require_causal_lm(teacher)
    data_tokenizer = data_dir / ckpt.TOKENIZER_FILE
    if not data_tokenizer.is_file():
        raise DataError(f"{data_dir} is not a prepared data directory (no tokenizer.json)")
    if Tokenizer.load(data_tokenizer).sha256() != tokenizer.sha256():
        raise DataError(
            f"teacher and student must share the tokenizer, but {data_dir} was prepared with "
            f"another one; prepare it with --tokenizer-file {teacher_dir / ckpt.TOKENIZER_FILE}"
        )
    cfg = _student_config(student_config, sets, data_dir, tokenizer.vocab_size)
    check_output_dir(out, overwrite)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    teacher.to(choose_device(cfg.train.device))
    objective = distillation_objective(teacher, temperature, alpha)
    summary = train(cfg, out, None, objective=(objective, _student_metrics))
    return {**summary, "temperature": temperature, "alpha": alpha}
