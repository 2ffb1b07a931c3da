"""LoRA against full fine-tuning: trainable share, peak memory and speed, then task accuracy.

    python benchmarks/finetune_efficiency.py [--batches 1,4] [--steps 6] [--base RUN]

1. Efficiency, on a GPT of 23.1M parameters (6 layers, n_embd 512, 8 heads, block 256,
   vocabulary 8192, learned positions, tied head), randomly initialised: memory and speed do not
   depend on the weights' values. Each variant runs in a fresh Python process so that the peak
   resident set size (`ru_maxrss`) is its own: the library's model, `add_lora` (r 8, alpha 16
   on q, k, v, o, i.e. our fused qkv and the attention output), `build_optimizer` (fused AdamW)
   and `clm_loss`, on the same random (batch, 256) token batch; 2 warm-up steps, then --steps
   timed optimizer steps (forward, backward, clip, step), in --rounds processes per variant
   taking turns going first; steps/s is from the median step over all rounds. LoRA saves the
   gradients and AdamW moments of the frozen weights (3 x 93 MB here) but not the activations,
   which grow with the batch; the ratio is therefore reported for each of --batches (the first
   is the headline), and also above the process's RSS before the model is built (Python +
   torch, ~245 MB).
2. Accuracy, on the classification task of benchmarks/bert_pretrain_finetune.py ("which
   library does this docstring come from?", its train/validation/test split by source file):
   `lmforge finetune classify` of the same pretrained BERT-mini, full (each lr
   of --full-lr) and with LoRA r 8 on q, k, v, o, fc, down plus the classifier head (each lr of
   --lora-lr), same epochs and seed. Each side gets the same search: the validation split picks
   its lr and epoch, and the test split is scored once, on the picks. The
   base is --base, else runs/bench-bert/bert-mini when that benchmark has been run, else a
   BERT-mini pretrained here for --pretrain-steps with that benchmark's functions.

The last stdout line is JSON.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lmforge.config import ModelConfig, TrainConfig, load_config
from lmforge.data.batches import clm_batch
from lmforge.model import GPT
from lmforge.model.lora import add_lora, trainable_share
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer

GPT_SHAPE = {"n_layer": 6, "n_head": 8, "n_embd": 512, "block_size": 256, "vocab_size": 8192}
LORA = {"r": 8, "alpha": 16.0, "targets": ["q", "k", "v", "o"]}
FULL_LRS = (5e-5, 1e-4, 3e-4, 6e-4, 1e-3)  # the same five-point search for both sides
LORA_LRS = (1e-3, 2e-3, 3e-3, 5e-3, 1e-2)
DEFAULT_BASE = Path("runs/bench-bert/bert-mini")
RATIOS = ("lora_peak_rss_vs_full", "lora_peak_above_runtime_vs_full", "lora_speedup")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- 1. one variant, in its process


def measure_variant(variant: str, batch: int, steps: int, seed: int) -> dict:
    """Train `steps` steps of one variant (full | lora); trainable share, peak RSS, speed."""
    rss_runtime = peak_rss_mb()  # Python, torch and lmforge imported; no model yet
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**GPT_SHAPE)).train()
    if variant == "lora":
        add_lora(model, LORA["targets"], LORA["r"], LORA["alpha"])
    trainable, total = trainable_share(model)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(
        0, GPT_SHAPE["vocab_size"], (batch, GPT_SHAPE["block_size"] + 1), generator=g
    )
    data = clm_batch(tokens)
    rss_before = peak_rss_mb()
    params = [p for p in model.parameters() if p.requires_grad]
    durations = []
    for _ in range(2 + steps):
        start = time.perf_counter()
        loss = clm_loss(model, data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - start)
    timed = durations[2:]
    step_s = statistics.median(timed)
    return {
        "params": total,
        "trainable": trainable,
        "trainable_share": trainable / total,
        "rss_runtime_mb": round(rss_runtime, 1),
        "rss_after_build_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_above_runtime_mb": round(peak_rss_mb() - rss_runtime, 1),
        "steps_per_s": round(1 / step_s, 3),
        "tokens_per_s": round(batch * GPT_SHAPE["block_size"] / step_s, 1),
        "step_seconds": [round(d, 5) for d in timed],
        "final_loss": round(loss.item(), 4),
    }


def run_variant(variant: str, batch: int, args: argparse.Namespace) -> dict:
    """measure_variant in a fresh interpreter, so its peak RSS is not the other's."""
    command = [sys.executable, __file__, "--variant", variant, "--batch", str(batch)]
    command += ["--steps", str(args.steps), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternated(batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """Each variant in --rounds fresh processes, taking turns going first; memory from the
    first round, speed from the median step over every round's timed steps."""
    rounds: dict[str, list[dict]] = {"full": [], "lora": []}
    for index in range(args.rounds):
        for variant in ("full", "lora") if index % 2 == 0 else ("lora", "full"):
            rounds[variant].append(run_variant(variant, batch, args))
    merged = {}
    for variant, runs in rounds.items():
        step_s = statistics.median(d for run in runs for d in run["step_seconds"])
        merged[variant] = {
            **runs[0],
            "steps_per_s": round(1 / step_s, 3),
            "tokens_per_s": round(batch * GPT_SHAPE["block_size"] / step_s, 1),
            "rounds": len(runs),
        }
        del merged[variant]["step_seconds"]
    return merged


def compare(batch: int, args: argparse.Namespace) -> dict:
    """Full and LoRA fine-tuning on the same (batch, 256) batch."""
    runs = alternated(batch, args)
    full, lora = runs["full"], runs["lora"]
    log(f"batch {batch}, full fine-tuning: {full}")
    log(f"batch {batch}, LoRA r={LORA['r']}: {lora}")
    return {
        "batch": [batch, GPT_SHAPE["block_size"]],
        "full_finetune": full,
        "lora_finetune": lora,
        "lora_peak_rss_vs_full": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "lora_peak_above_runtime_vs_full": round(
            lora["peak_above_runtime_mb"] / full["peak_above_runtime_mb"], 3
        ),
        "lora_speedup": round(lora["steps_per_s"] / full["steps_per_s"], 3),
    }


def efficiency(args: argparse.Namespace) -> dict:
    """The headline comparison at the first of --batches; the others show the trend."""
    runs = [compare(batch, args) for batch in args.batches]
    share = runs[0]["lora_finetune"]["trainable_share"]
    return {
        "model": "GPT 6 layers, n_embd 512, 8 heads, block 256, vocab 8192; random init",
        "params": runs[0]["full_finetune"]["params"],
        "timed_steps": args.steps,
        "lora": {**LORA, "targets": ",".join(LORA["targets"])},
        "lora_trainable_share": round(share, 5),
        **runs[0],
        "by_batch": {str(r["batch"][0]): {k: r[k] for k in RATIOS} for r in runs},
    }


# ---------------------------------------------------------------- 2. accuracy on a task


# The accuracy part imports lmforge.jobs and the BERT benchmark (sklearn, matplotlib, ...) only
# where it needs them, so that the variant processes' RSS holds no more than training needs.


def pretrained_base(args: argparse.Namespace) -> tuple[Path, str]:
    """The BERT-mini run to fine-tune, and where it came from."""
    from bert_pretrain_finetune import CONFIG, prepare_corpus, pretrain_sets  # a sibling script
    from lmforge.jobs.pretrain import pretrain

    if args.base is not None:
        return args.base, "given with --base"
    if (DEFAULT_BASE / "model.safetensors").is_file():
        return DEFAULT_BASE, "benchmarks/bert_pretrain_finetune.py's run"
    data = prepare_corpus(args.work, 8192)
    steps = args.pretrain_steps
    run = args.work / "bert-mini"
    pretrain(load_config(CONFIG, pretrain_sets(data, steps, args.seed)), run, True)
    return run, f"pretrained here for {steps} steps (configs/bert-mini.yaml)"


def tuned(base: Path, files, out: Path, lrs: Sequence[float], extra: list[str], args) -> dict:
    """`finetune classify` at each lr; the one with the best validation accuracy, and all."""
    from bert_pretrain_finetune import finetune  # a sibling script

    runs = [finetune(base, files, out / f"lr-{lr}", lr, extra, args) for lr in lrs]
    for run in runs:
        log(
            f"{out.name} lr {run['lr']}: valid {run['valid_accuracy']:.3f}, "
            f"test {run['accuracy']:.3f}"
        )
    return {"picked": max(runs, key=lambda r: r["valid_accuracy"]), "search": runs}


def accuracy(args: argparse.Namespace) -> dict:
    """Full and LoRA fine-tuning, each with its lr picked on the validation split (and its
    epoch too), then scored once on the test split."""
    from bert_pretrain_finetune import task_files

    base, origin = pretrained_base(args)
    files, task = task_files(args.work, args.seed)
    full = tuned(base, files, args.work / "full", args.full_lr, [], args)
    lora_sets = [f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}"]
    lora_sets.append(f"lora.targets={args.lora_targets}")
    lora = tuned(base, files, args.work / "lora", args.lora_lr, lora_sets, args)
    points = 100 * (lora["picked"]["accuracy"] - full["picked"]["accuracy"])
    return {
        "base": str(base),
        "base_origin": origin,
        "task": task,
        "epochs": args.ft_epochs,
        "full_finetune": full,
        "lora_finetune": lora,
        "lora_minus_full_points": round(points, 1),
    }


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batches",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[1, 4],
        help="batch sizes (sequences of 256 tokens) to compare at; the first is the headline",
    )
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--base", type=Path, help="a pretrained BERT run for the accuracy part")
    parser.add_argument("--pretrain-steps", type=int, default=400, help="without a base run")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-finetune"))
    parser.add_argument("--full-lr", type=floats, default=FULL_LRS, help="lrs to try")
    parser.add_argument("--lora-lr", type=floats, default=LORA_LRS, help="lrs to try")
    parser.add_argument("--lora-targets", default="q,k,v,o,fc,down", help="accuracy part")
    parser.add_argument("--ft-epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--skip-accuracy", action="store_true", help="only part 1")
    parser.add_argument("--skip-efficiency", action="store_true", help="only part 2")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # the child process of run_variant
        print(json.dumps(measure_variant(args.variant, args.batch, args.steps, args.seed)))
        return
    start = time.perf_counter()
    result = {} if args.skip_efficiency else {"efficiency": efficiency(args)}
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args)
    result["minutes"] = round((time.perf_counter() - start) / 60, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
