"""The CPU speedrun: time to nanoGPT's validation loss on char-level Shakespeare.

    python benchmarks/speedrun.py --data ../shared/data/tinyshakespeare.txt [--only speedrun]
        [--config configs/speedrun-char.yaml] [--set train.max_steps=600 ...] [--rounds 1]

Rules, as in the public speedrun: the same characters, nanoGPT's split (first 90% train, last
10% validation) and the same measure, the mean cross-entropy per character over the whole
validation split (each character predicted once, in non-overlapping windows of the model's
context). Everything else (shape, optimizer, schedule, precision, kernels) is fair game.

Two runs, through lmforge's own pieces (config, batch sources, model, optimizer, Trainer):
(a) the baseline, nanoGPT's CPU recipe (4 layers, 4 heads, width 128, block 64, batch 12,
    learned positions, biases, GELU, AdamW (0.9, 0.99), wd 0.1, lr 1e-3 -> 1e-4 cosine after
    100 warmup steps, clip 1.0, float32, 2000 iterations);
(b) the speedrun config. Every --eval-every steps its loss on a fixed validation subset is
    measured; once that is at or below the target, the whole validation split decides.
Times are training wall time: evaluation excluded (as the public speedrun counts), start-up
included (the precision calibration of train.dtype=auto). With --rounds R the two runs take turns
R times and medians are reported. One JSON line at the end.
"""

import argparse
import json
import math
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import RunConfig, from_dict, load_config, to_dict
from lmforge.data.batches import clm_batch
from lmforge.data.shards import FORMAT, META_FILE, TokenShards, token_dtype
from lmforge.data.sources import batch_sources
from lmforge.jobs.session import resolve_precision
from lmforge.rundir.load import build_model
from lmforge.tokenizer import Tokenizer
from lmforge.train.distributed import DistContext
from lmforge.train.loggers import open_sink
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import keep_freed_memory, seed_everything
from lmforge.train.tracker import Tracker
from lmforge.train.trainer import Trainer

TARGET = 1.886  # nanoGPT's val loss after 2000 iterations of its CPU recipe (bench/RESULTS.md)
BASELINE = {
    "model": {
        "block_size": 64,
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "dropout": 0.0,
        "bias": True,
        "pos_emb": "learned",
        "activation": "gelu",
    },
    "train": {
        "max_steps": 2000,
        "batch_size": 12,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 100,
        "beta1": 0.9,
        "beta2": 0.99,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "dtype": "float32",
        "progress": False,
    },
}


def cpu_name() -> str:
    """lscpu's model name (the CPU every figure belongs to)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Calibration: this machine's matmul throughput right now."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def write_char_shards(text: str, out: Path) -> Tokenizer:
    """nanoGPT's data: one token per character, the first 90% train, the last 10% val."""
    tokenizer = Tokenizer.train_char([text])
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    split = int(len(ids) * 0.9)
    dtype = token_dtype(tokenizer.vocab_size)
    splits = {}
    for name, part in (("train", ids[:split]), ("val", ids[split:])):
        file = f"{name}_000.bin"
        (out / file).write_bytes(part.astype(dtype).tobytes())
        files = [{"name": file, "tokens": len(part)}]
        splits[name] = {"files": files, "tokens": len(part), "documents": 1}
    meta = {
        "format": FORMAT,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "eot_id": None,
        "tokenizer_kind": tokenizer.kind,
        "tokenizer_sha256": tokenizer.sha256(),
        "val_fraction": 0.1,
        "splits": splits,
    }
    (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    tokenizer.save(out / "tokenizer.json")
    return tokenizer


def val_windows(shards: TokenShards, block_size: int) -> torch.Tensor:
    """The whole val split as non-overlapping windows: each character predicted once."""
    windows: Iterator[torch.Tensor] = shards.sequential_windows("val", block_size + 1)
    return torch.stack(list(windows))


@torch.inference_mode()
def mean_loss(model: torch.nn.Module, windows: torch.Tensor, dtype: str) -> float:
    """Mean cross-entropy per predicted character over the windows (in the run's precision)."""
    was_training = model.training
    model.eval()
    total = 0.0
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16")
    for chunk in windows.split(128):
        with autocast:
            total += clm_loss(model, clm_batch(chunk)).item() * len(chunk)
    model.train(was_training)
    return total / len(windows)


def watched(cfg: RunConfig, run_dir: Path | None, logger: str) -> Tracker | None:
    """A run's metrics.jsonl and loss.png in run_dir, and train.logger's sink (or None)."""
    if run_dir is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = open_sink(logger, run_dir, 0, to_dict(cfg))
    return Tracker(run_dir, cfg.train.max_steps, 0, progress=False, sink=sink)


def train_to_target(
    cfg: RunConfig,
    shards: TokenShards,
    tokenizer: Tokenizer,
    eval_every: int,
    subset: int,
    run_dir: Path | None = None,
    logger: str = "none",
) -> dict[str, Any]:
    """Train cfg to its max_steps, timing the steps only; the first step whose whole-val loss
    is <= TARGET (checked when the subset says it may be) gives the time to target."""
    start = time.perf_counter()
    cfg = resolve_precision(cfg, torch.device("cpu"), DistContext())
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    train_batch, _ = batch_sources(cfg, shards, tokenizer)
    trainer = Trainer(model, build_optimizer(model, cfg.train), train_batch, cfg.train, clm_loss)
    trainer.tracker = watched(cfg, run_dir, logger)
    trained = time.perf_counter() - start
    windows = val_windows(shards, cfg.model.block_size)
    sample = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))]
    sample = sample[:subset]
    curve, reached = [], None
    while trainer.state.step < cfg.train.max_steps:
        t0 = time.perf_counter()
        trainer.fit(stop_at=min(trainer.state.step + eval_every, cfg.train.max_steps))
        trained += time.perf_counter() - t0
        estimate = mean_loss(model, sample, cfg.train.dtype)
        curve.append((trainer.state.step, round(trained, 2), round(estimate, 4)))
        if trainer.tracker is not None:
            record = {"step": trainer.state.step, "val_loss": estimate, "train_seconds": trained}
            trainer.tracker.log(record)
        if reached is None and estimate <= TARGET + 0.02:
            whole = mean_loss(model, windows, cfg.train.dtype)
            if whole <= TARGET:
                reached = {"step": trainer.state.step, "seconds": trained, "val_loss": whole}
    final = mean_loss(model, windows, cfg.train.dtype)
    if trainer.tracker is not None:
        trainer.tracker.close()
    return {
        "seconds": trained,
        "final_val_loss": final,
        "reached": reached,
        "dtype": cfg.train.dtype,
        "tokens_per_s": trainer.state.tokens_seen / trained,
        "params": model.num_params(),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    parser.add_argument("--config", default="configs/speedrun-char.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="speedrun --set")
    parser.add_argument("--only", choices=["baseline", "speedrun"], help="run just one side")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between subset evals")
    parser.add_argument("--subset", type=int, default=256, help="val windows in the subset")
    parser.add_argument("--curve", action="store_true", help="print each eval point")
    parser.add_argument("--log-dir", type=Path, help="write each run's metrics here (RUN-r<i>)")
    parser.add_argument(
        "--logger", default="none", choices=["none", "tensorboard", "wandb"], help="with --log-dir"
    )
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    keep_freed_memory()
    text = args.data.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_char_shards(text, Path(tmp))
        shards = TokenShards(tmp)
        data = [f"data.dir={tmp}", f"model.vocab_size={tokenizer.vocab_size}"]
        base = from_dict(RunConfig, BASELINE)
        base = replace(
            base,
            data=replace(base.data, dir=tmp),
            model=replace(base.model, vocab_size=tokenizer.vocab_size),
        )
        fast = load_config(args.config, [*args.sets, *data, "train.progress=false"])
        sides = {"baseline": base, "speedrun": fast}
        if args.only:
            sides = {args.only: sides[args.only]}
        calibration = {"fp32_gflops": [matmul_gflops(torch.float32)]}
        calibration["bf16_gflops"] = [matmul_gflops(torch.bfloat16)]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for name in order:
                run_dir = args.log_dir / f"{name}-r{round_index}" if args.log_dir else None
                run = train_to_target(
                    sides[name],
                    shards,
                    tokenizer,
                    args.eval_every,
                    args.subset,
                    run_dir,
                    args.logger,
                )
                results[name].append(run)
                if args.curve:
                    print(name, json.dumps(run["curve"]), flush=True)
        calibration["fp32_gflops"].append(matmul_gflops(torch.float32))
        calibration["bf16_gflops"].append(matmul_gflops(torch.bfloat16))
    print(json.dumps(summary(results, calibration, args)))


def _median(runs: list[dict[str, Any]], pick) -> float | None:
    values = [pick(r) for r in runs]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summary(
    results: dict[str, list[dict[str, Any]]], calibration: dict[str, list[float]], args: Any
) -> dict[str, Any]:
    """The JSON line: the issue's keys, medians over rounds, each run's figures beside them."""
    out: dict[str, Any] = {"target": TARGET}
    if "baseline" in results:
        runs = results["baseline"]
        out["baseline_seconds"] = _median(runs, lambda r: r["seconds"])
        out["baseline_final_val_loss"] = _median(runs, lambda r: r["final_val_loss"])
        out["baseline_seconds_to_target"] = _median(
            runs, lambda r: r["reached"] and r["reached"]["seconds"]
        )
        out["baseline_tokens_per_s"] = _median(runs, lambda r: r["tokens_per_s"])
    if "speedrun" in results:
        runs = results["speedrun"]
        out["speedrun_seconds_to_target"] = _median(
            runs, lambda r: r["reached"] and r["reached"]["seconds"]
        )
        out["speedrun_steps"] = _median(runs, lambda r: r["reached"] and r["reached"]["step"])
        out["speedrun_final_val_loss"] = _median(runs, lambda r: r["final_val_loss"])
        out["speedrun_seconds"] = _median(runs, lambda r: r["seconds"])
        out["speedrun_reached_in_rounds"] = sum(r["reached"] is not None for r in runs)
        out["speedrun_dtype"] = runs[0]["dtype"]
        out["speedrun_tokens_per_s"] = _median(runs, lambda r: r["tokens_per_s"])
        out["speedrun_params"] = runs[0]["params"]
    if out.get("baseline_seconds") and out.get("speedrun_seconds_to_target"):
        ratio = out["speedrun_seconds_to_target"] / out["baseline_seconds"]
        out["ratio_to_baseline"] = round(ratio, 3)
    out["rounds"] = args.rounds
    out["config"] = args.config
    out["sets"] = args.sets
    out["calibration"] = {k: [round(v, 1) for v in vals] for k, vals in calibration.items()}
    out["cpu"] = cpu_name()
    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    if not math.isfinite(out.get("speedrun_final_val_loss") or 0.0):
        out["note"] = "the speedrun diverged"
    return out


if __name__ == "__main__":
    main()
