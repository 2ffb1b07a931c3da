"""What compression costs and buys on the demo model: int8, 50% magnitude pruning, head pruning.

    make demo    # once: runs/demo and data/demo
    python benchmarks/compression.py [--run runs/demo --data data/demo --recovery-steps 300]

For each variant: validation perplexity over the whole val split, the whole model's bytes
(every tensor its file holds, tied ones once) and its linear layers' bytes, and greedy decoding
speed (batch 1, 16-token prompt, 128 new tokens, rounds alternating between
variants so all see the same machine speed), also batch 8 and whole-window scoring tokens/s.
Pruned models that get recovery steps are compared with the dense model given the same steps
(same batches, same lr): extra training alone moves perplexity. int8 is also written as a run
directory by `compress quantize`, and both directories are measured on disk.
`--gpt2-shape` adds int8 against fp32 on a random-init GPT-2-small shape (124M), where decoding
is bound by reading the weights. The last line is JSON.
"""

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lmforge.compress.prune import (
    magnitude_prune,
    make_permanent,
    prune_heads,
    sparsity_by_layer,
)
from lmforge.compress.quantize import linear_weight_bytes, model_bytes, quantize_int8
from lmforge.config import SamplingConfig, TrainConfig
from lmforge.data.batches import Batch, clm_batch, step_generator
from lmforge.data.shards import TokenShards
from lmforge.evaluate import split_perplexity
from lmforge.generation.loop import generate_batch_tokens
from lmforge.jobs.compress import directory_bytes, quantize_run
from lmforge.model.onednn import packed_linears
from lmforge.rundir import layout
from lmforge.rundir.load import load_run
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.trainer import Trainer
from train_shakespeare_char import matmul_gflops  # a sibling script: the calibration matmul


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode(model: nn.Module, prompts: list[list[int]], new_tokens: int) -> None:
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    for _ in generate_batch_tokens(model, prompts, sampling):
        pass


@torch.inference_mode()
def score_speed(model: nn.Module, windows: torch.Tensor) -> float:
    """Tokens/s of whole-window forward passes (what evaluation and prefill do)."""
    with packed_linears(model):
        model(windows[:, :-1])
        seconds = min(timed(lambda: model(windows[:, :-1])) for _ in range(3))
    return windows[:, :-1].numel() / seconds


def recovered(model: nn.Module, shards: TokenShards, steps: int, block: int) -> list[float]:
    """Recovery steps as `compress prune --finetune-steps` runs them (the one Trainer, a constant
    lr of 1e-4, gradients clipped at 1); the training loss of every step."""
    cfg = TrainConfig(
        max_steps=steps, lr=1e-4, min_lr=1e-4, warmup_steps=0, grad_clip=1.0, progress=False
    )
    losses: list[float] = []

    def loss(m: nn.Module, batch: Batch) -> torch.Tensor:
        value = clm_loss(m, batch)
        losses.append(value.item())
        return value

    def batch(step: int, micro: int) -> Batch:
        generator = step_generator(1234, step)
        return clm_batch(shards.sample_windows("train", 16, block + 1, generator))

    Trainer(model.train(), build_optimizer(model, cfg), batch, cfg, loss).fit()
    model.eval()
    return losses


def variants(model: nn.Module, shards: TokenShards, block: int, steps: int) -> dict:
    int8, scheme = quantize_int8(model)
    dense_trained = copy.deepcopy(model)
    dense_losses = recovered(dense_trained, shards, steps, block)
    no_recovery, pruned = copy.deepcopy(model), copy.deepcopy(model)
    for copy_ in (no_recovery, pruned):  # the same global ranking gives the same masks
        magnitude_prune(copy_, 0.5)
    make_permanent(no_recovery)
    losses = recovered(pruned, shards, steps, block)
    make_permanent(pruned)
    heads = prune_heads(model, 0.25)
    heads_recovered = copy.deepcopy(heads)
    recovered(heads_recovered, shards, steps, block)
    print(f"int8 scheme: {scheme}; 50% recovery loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"dense, same {steps} steps: loss {dense_losses[0]:.3f} -> {dense_losses[-1]:.3f}")
    return {
        "fp32": model,
        f"fp32+{steps} steps": dense_trained,
        "int8": int8,
        "magnitude50": no_recovery,
        "magnitude50+recovery": pruned,
        "heads25": heads,
        "heads25+recovery": heads_recovered,
    }


def measure(models: dict, shards: TokenShards, block: int, rounds: int, prompt: list[int]) -> dict:
    rows = {}
    for name, model in models.items():
        ppl = split_perplexity(model, shards, "val", block).perplexity
        rows[name] = {
            "perplexity": round(ppl, 3),
            "model_mb": model_bytes(model) / 1e6,
            "linear_mb": linear_weight_bytes(model) / 1e6,
        }
        if name.startswith("magnitude"):
            rows[name]["zero_fraction"] = round(sparsity_by_layer(model)["total"], 4)
        print(f"{name:22s} perplexity {ppl:8.3f}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):  # alternate variants within each round
        for name, model in models.items():
            times[name].append(timed(lambda m=model: decode(m, [prompt], 128)))
    windows = torch.stack(list(shards.sequential_windows("val", block + 1))[:8])
    batch8 = [prompt] * 8
    for name, model in models.items():
        rows[name]["decode_tokens_per_s"] = round(128 / statistics.median(times[name]), 1)
        batch_time = min(timed(lambda m=model: decode(m, batch8, 64)) for _ in range(2))
        rows[name]["decode_batch8_tokens_per_s"] = round(8 * 64 / batch_time, 1)
        rows[name]["score_tokens_per_s"] = round(score_speed(model, windows), 0)
    base = rows["fp32"]
    trained = next(row for name, row in rows.items() if name.startswith("fp32+"))
    for name, row in rows.items():
        row["perplexity_change"] = round(row["perplexity"] / base["perplexity"] - 1, 4)
        if "recovery" in name or name.startswith("fp32+"):  # against the same extra training
            row["perplexity_change_vs_trained_dense"] = round(
                row["perplexity"] / trained["perplexity"] - 1, 4
            )
        row["decode_speedup"] = round(row["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3)
        row["batch8_speedup"] = round(
            row["decode_batch8_tokens_per_s"] / base["decode_batch8_tokens_per_s"], 3
        )
        row["score_speedup"] = round(row["score_tokens_per_s"] / base["score_tokens_per_s"], 3)
        row["linear_shrink"] = round(base["linear_mb"] / row["linear_mb"], 3)
        row["model_shrink"] = round(base["model_mb"] / row["model_mb"], 3)
        row["linear_mb"] = round(row["linear_mb"], 3)
        row["model_mb"] = round(row["model_mb"], 3)
    return rows


def int8_run_sizes(run: Path) -> dict:
    """`compress quantize` on the run: weights file and whole directory, before and after."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = quantize_run(run, Path(tmp) / "int8")
        sizes = {key: summary[key] for key in ("model_bytes_before", "model_bytes_after")}
        sizes["run_bytes_before"] = directory_bytes(run)
        sizes["run_bytes_after"] = directory_bytes(Path(tmp) / "int8")
    sizes["model_file_shrink"] = round(sizes["model_bytes_before"] / sizes["model_bytes_after"], 3)
    sizes["run_shrink"] = round(sizes["run_bytes_before"] / sizes["run_bytes_after"], 3)
    return sizes


def gpt2_shape_int8(rounds: int) -> dict:
    """int8 against fp32 decoding speed on the GPT-2-small shape (random init)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.interop.hf import model_from_hf

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    model = model_from_hf(hf.config.to_dict(), hf.state_dict())
    del hf
    int8, _ = quantize_int8(model)
    prompt = list(range(16))
    decode(model, [prompt], 8)
    decode(int8, [prompt], 8)
    fp32_s, int8_s = [], []
    for _ in range(rounds):
        fp32_s.append(timed(lambda: decode(model, [prompt], 64)))
        int8_s.append(timed(lambda: decode(int8, [prompt], 64)))
    fp32_tps, int8_tps = 64 / statistics.median(fp32_s), 64 / statistics.median(int8_s)
    return {
        "fp32_tokens_per_s": round(fp32_tps, 1),
        "int8_tokens_per_s": round(int8_tps, 1),
        "int8_speedup": round(int8_tps / fp32_tps, 3),
        "linear_shrink": round(linear_weight_bytes(model) / linear_weight_bytes(int8), 3),
        "model_shrink": round(model_bytes(model) / model_bytes(int8), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--recovery-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpt2-shape", action="store_true", help="also int8 on GPT-2-small")
    args = parser.parse_args()
    if not (args.run / layout.MODEL_FILE).is_file():
        raise SystemExit(f"{args.run} has no model: run `make demo` first (or pass --run)")
    torch.manual_seed(0)
    cfg, model, tokenizer = load_run(args.run)
    shards = TokenShards(args.data)
    block = cfg.model.block_size
    prompt = tokenizer.encode("The list type is a mutable sequence")[:16]
    models = variants(model, shards, block, args.recovery_steps)
    calibration = [matmul_gflops()]
    result = {"rows": measure(models, shards, block, args.rounds, prompt)}
    calibration.append(matmul_gflops())
    result["matmul_gflops"] = [round(g, 1) for g in calibration]
    result["int8_run"] = int8_run_sizes(args.run)
    if args.gpt2_shape:
        result["gpt2_shape"] = gpt2_shape_int8(args.rounds)
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    for name, row in result["rows"].items():
        print(name, row)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
