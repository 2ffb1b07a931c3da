"""Scale-out on this machine: 2-process DDP against 1 process, and FSDP against DDP memory.

    make demo    # once: data/demo
    python benchmarks/scaling.py [--data data/demo --steps 60]

1. Throughput: `lmforge pretrain` on the demo config, the same micro-batch per process, once
   as 1 process and once as 2 DDP processes (`--nproc 2`, gloo). tokens/s is the median of the
   runs' logged figures after warm-up (global tokens per second), efficiency = DDP tokens/s /
   (2 x single-process tokens/s). On a 2-core machine the two processes share the cores the
   single process had to itself, so this measures the overhead, not a speed-up.
2. Memory: a GPT of >= 50M parameters, 3 optimizer steps under torchrun with 2 processes, DDP
   and FSDP; each rank reports its peak RSS (ru_maxrss) and the bytes of its own weights,
   gradients and AdamW moments (local shards). FSDP shards those, so they should approach half
   of DDP's. The FSDP model is built on the meta device and only rank 0 builds it whole (to
   broadcast its initial weights), so rank 1's peak shows the sharded footprint.

The last line is JSON.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

DEMO = ["--config", "configs/gpt-nano-cpu.yaml"]
BIG = dict(n_layer=8, n_head=8, n_embd=640, block_size=128, vocab_size=16512)  # 50.04M


def pretrain_tokens_per_s(data: Path, out: Path, steps: int, nproc: int) -> float:
    sets = [f"train.max_steps={steps}", "train.eval_interval=100000", "train.progress=false"]
    sets += ["train.checkpoint_interval=100000", "train.log_interval=5"]
    command = [sys.executable, "-m", "lmforge", "-q", "pretrain", *DEMO, "--data", str(data)]
    command += ["--out", str(out), "--overwrite", "--nproc", str(nproc)]
    command += [x for s in sets for x in ("--set", s)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return statistics.median(rates[len(rates) // 3 :])  # after warm-up


def worker(strategy: str) -> None:
    """One torchrun rank: build the big GPT as `lmforge pretrain` does (FSDP: on the meta
    device, then sharded and filled from rank 0), take 3 AdamW steps, report."""
    from lmforge.config import DistConfig, ModelConfig, RunConfig, TrainConfig
    from lmforge.data.batches import clm_batch
    from lmforge.jobs.session import TrainingPlan, prepare_model
    from lmforge.train.distributed import init_distributed
    from lmforge.train.objectives import clm_loss
    from lmforge.train.optim import build_optimizer

    ctx = init_distributed("cpu")
    cfg = RunConfig(
        model=ModelConfig(**BIG),
        train=TrainConfig(batch_size=2),
        dist=DistConfig(strategy=strategy),
    )
    model, trained = prepare_model(cfg, TrainingPlan(), torch.device("cpu"), ctx, None)
    params = model.num_params()  # a DTensor counts its global size
    optimizer = build_optimizer(model, cfg.train)
    for step in range(3):
        windows = torch.randint(0, BIG["vocab_size"], (2, BIG["block_size"] + 1))
        clm_loss(trained, clm_batch(windows)).backward()
        optimizer.step()
        if step == 2:  # weights, gradients and moments all present
            states = sum(state_bytes(p, optimizer) for p in model.parameters()) / 2**20
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB on Linux
    row = {"rank": ctx.rank, "strategy": strategy, "peak_mb": peak, "params": params}
    print(json.dumps({**row, "state_mb": states}))
    torch.distributed.destroy_process_group()


def state_bytes(p: torch.nn.Parameter, optimizer: torch.optim.Optimizer) -> int:
    """This rank's bytes of a parameter, its gradient and its AdamW moments (local shards)."""
    tensors = [p, p.grad, *optimizer.state[p].values()]
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors if t is not None]
    return sum(t.numel() * t.element_size() for t in local if t.dim() > 0)


def peak_memory(strategy: str) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc-per-node", "2", __file__, "--worker", strategy]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    return {
        "params": rows[0]["params"],
        "peak_mb_per_rank": [round(r["peak_mb"], 1) for r in sorted(rows, key=lambda r: r["rank"])],
        "state_mb_per_rank": [
            round(r["state_mb"], 1) for r in sorted(rows, key=lambda r: r["rank"])
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if not (args.data / "meta.json").is_file():
        raise SystemExit(f"{args.data} is not prepared data: run `make demo` first (or --data)")
    with tempfile.TemporaryDirectory() as tmp:
        one = pretrain_tokens_per_s(args.data, Path(tmp) / "one", args.steps, 1)
        two = pretrain_tokens_per_s(args.data, Path(tmp) / "two", args.steps, 2)
    print(f"tokens/s: 1 process {one:,.0f}; 2 DDP processes {two:,.0f}")
    ddp, fsdp = peak_memory("ddp"), peak_memory("fsdp")
    print(
        f"peak RSS per rank ({ddp['params']:,} parameters): DDP {ddp['peak_mb_per_rank']} MB, "
        f"FSDP {fsdp['peak_mb_per_rank']} MB; weights + grads + AdamW per rank: DDP "
        f"{ddp['state_mb_per_rank']} MB, FSDP {fsdp['state_mb_per_rank']} MB"
    )
    result = {
        "single_tokens_per_s": round(one),
        "ddp2_tokens_per_s": round(two),
        "ddp2_efficiency": round(two / (2 * one), 3),
        "ddp2_vs_single": round(two / one, 3),
        "big_model_params": ddp["params"],
        "ddp_peak_mb_per_rank": ddp["peak_mb_per_rank"],
        "fsdp_peak_mb_per_rank": fsdp["peak_mb_per_rank"],
        "fsdp_over_ddp_peak_rss_per_rank": [
            round(f / d, 3)
            for f, d in zip(fsdp["peak_mb_per_rank"], ddp["peak_mb_per_rank"], strict=True)
        ],
        "ddp_state_mb_per_rank": ddp["state_mb_per_rank"],
        "fsdp_state_mb_per_rank": fsdp["state_mb_per_rank"],
        "fsdp_over_ddp_states": round(
            max(fsdp["state_mb_per_rank"]) / max(ddp["state_mb_per_rank"]), 3
        ),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
