"""What the training switches cost and save on this machine: torch.compile per block and
activation checkpointing, against the plain run, through `lmforge pretrain`.

    make demo    # once: data/demo
    python benchmarks/training_switches.py [--data data/demo --steps 60]

Each variant is a fresh `lmforge pretrain` process on the demo data: the demo model, and a
deeper, wider one (8 layers, n_embd 256, context 256) where activations weigh more. tokens/s
is the median of the logged figures after the first third of the steps (compilation happens
in the first steps); peak RSS is the process's ru_maxrss. Variants alternate over --rounds so
that drift in the machine's speed hits them alike. The last line is JSON.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODELS = {
    "demo": [],
    "deep": ["model.n_layer=8", "model.n_embd=256", "model.block_size=256", "train.batch_size=8"],
}
VARIANTS = {
    "plain": [],
    "compile": ["train.compile=true"],
    "activation_checkpointing": ["dist.activation_checkpointing=true"],
}
RUNNER = (
    "import resource, sys; from lmforge.cli.main import main; code = main(sys.argv[1:]); "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
)


def run(data: Path, out: Path, steps: int, sets: list[str]) -> dict:
    fixed = [f"train.max_steps={steps}", "train.eval_interval=1000", "train.progress=false"]
    fixed += ["train.checkpoint_interval=0", "train.log_interval=1", "train.warmup_steps=5"]
    args = ["pretrain", "--config", "configs/gpt-nano-cpu.yaml", "--data", str(data)]
    args += ["--out", str(out), "--overwrite"]
    args += [x for s in [*fixed, *sets] for x in ("--set", s)]
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"lmforge pretrain failed ({' '.join(sets)}):\n{done.stderr[-2000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    rss = next(line for line in done.stdout.splitlines() if line.startswith("MAXRSS"))
    return {"tokens_per_s": statistics.median(rates[len(rates) // 3 :]), "rss_kb": int(rss[7:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (args.data / "meta.json").is_file():
        raise SystemExit(f"{args.data} is not prepared data: run `make demo` first (or --data)")
    results: dict = {m: {v: [] for v in VARIANTS} for m in MODELS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for model, model_sets in MODELS.items():
                for variant, sets in VARIANTS.items():
                    out = Path(tmp) / f"{model}-{variant}"
                    row = run(args.data, out, args.steps, [*model_sets, *sets])
                    results[model][variant].append(row)
                    print(
                        f"{model:5s} {variant:25s} {row['tokens_per_s']:9,.0f} tokens/s "
                        f"peak RSS {row['rss_kb'] / 1024:7.1f} MB",
                        flush=True,
                    )
    summary = {}
    for model, variants in results.items():
        base_rate = statistics.median(r["tokens_per_s"] for r in variants["plain"])
        base_rss = statistics.median(r["rss_kb"] for r in variants["plain"])
        summary[model] = {
            variant: {
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows)),
                "speed_vs_plain": round(
                    statistics.median(r["tokens_per_s"] for r in rows) / base_rate, 3
                ),
                "peak_rss_mb": round(statistics.median(r["rss_kb"] for r in rows) / 1024, 1),
                "rss_vs_plain": round(statistics.median(r["rss_kb"] for r in rows) / base_rss, 3),
            }
            for variant, rows in variants.items()
        }
    print(json.dumps({"models": summary, "torch": torch.__version__, "steps": args.steps}))


if __name__ == "__main__":
    main()
