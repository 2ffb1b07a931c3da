"""How long `lmforge --help` takes to start, and what it imports.

    python benchmarks/cli_startup.py [--compare OTHER_SRC]

Times `python -m lmforge --help` for this tree's src/ (and for OTHER_SRC, e.g. an older
checkout's src/, alternating with it round by round) after one warm-up each, and prints the
median wall time, the number of modules imported and the sum of `-X importtime` self times,
and which heavy libraries were imported. Run it alone: a second process skews start-up times.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "matplotlib", "sacrebleu", "numpy", "safetensors", "tqdm", "tokenizers")


def wall_time(src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    command = [sys.executable, "-m", "lmforge", "--help"]
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def imports(src: Path) -> tuple[int, float, list[str]]:
    """(modules imported, sum of their self import times in s, heavy libraries among them)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-X", "importtime", "-m", "lmforge", "--help"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    rows = [line for line in done.stderr.splitlines() if line.startswith("import time:")][1:]
    names = {row.split("|")[-1].strip() for row in rows}
    self_us = sum(int(row.split("|")[0].split(":")[1]) for row in rows)
    return len(rows), self_us / 1e6, [m for m in HEAVY if m in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="another tree's src/ to time alongside")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trees = {"this tree": Path(__file__).resolve().parents[1] / "src"}
    if args.compare:
        trees["compared"] = args.compare.resolve()
    for src in trees.values():
        wall_time(src)  # warm-up: the file cache
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            times[name].append(wall_time(src))
    for name, src in trees.items():
        count, self_s, heavy = imports(src)
        print(
            f"{name}: median {statistics.median(times[name]):.3f} s over {args.rounds} rounds; "
            f"{count} modules, import self time {self_s:.3f} s; heavy: {heavy or 'none'}"
        )


if __name__ == "__main__":
    main()
