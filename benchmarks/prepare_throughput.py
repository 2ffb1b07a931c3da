"""Throughput of `lmforge prepare`, before and after, and of its encoding against tiktoken.

    python benchmarks/prepare_throughput.py [--mb 50] [--rounds 3] [--before a9b2317]
    python benchmarks/prepare_throughput.py --rss-mb 200      # peak memory on a file without
                                                              # blank lines (one round)

The corpus is the built-in one (`builtin:python-docs`, this Python's documentation) written
again and again, each copy varied (seeded word swaps, numbered copies) so that neither exact nor
near-duplicate removal shrinks it, until it holds --mb megabytes of UTF-8, paragraphs separated
by blank lines. Near-duplicate removal stays off on both sides.

Three measurements, every pair side by side in alternating rounds, medians reported:
1. `lmforge prepare --tokenizer bpe --vocab-size 8192` end to end (reading, cleaning, training
   the tokenizer, encoding, writing shards), as a subprocess: this checkout against the source
   of the --before commit (extracted with `git archive`, run by the same Python and packages).
   MB/s = corpus megabytes / wall seconds; peak RSS of each process is reported too.
   A third side runs this checkout with --tokenizer-sample-mb 0 (the tokenizer trained on all the
   text, as before), so that the share of the speed-up owed to training on a sample shows.
2. Encoding only, on the cleaned documents held in memory: lmforge's shard encoder
   (`lmforge.data.token_encoding.encode_texts`: what prepare runs, worker processes included)
   against tiktoken's `encode_ordinary_batch`, with an `Encoding` built from the same locally
   trained byte-level BPE vocabulary (ranks = lmforge's token ids, GPT-2's split pattern as
   the ByteLevel pre-tokenizer uses); both sides given the machine's cores as threads. The
   share of documents encoded to identical ids is printed as the cross-check.
3. With --rss-mb: one prepare of a generated file of that size with no blank line in it
   (sentences one per line), its wall time and peak RSS (the issue's target: under 1 GB).

A calibration (a pure-Python loop and a tokenizer-free regex scan, ops per second) is printed
before and after, so that a run disturbed by another process shows itself. One JSON line ends.
"""

import argparse
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()} ({' '.join(wanted)})"


def calibration() -> dict[str, float]:
    """Single-thread speed right now: a Python loop and a regex scan (operations per second)."""
    start = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    loop = 2_000_000 / (time.perf_counter() - start)
    text = "the quick brown fox jumps over the lazy dog. " * 20_000
    start = time.perf_counter()
    words = len(re.findall(r"\w+", text))
    scan = words / (time.perf_counter() - start)
    return {"python_loop_mops": round(loop / 1e6, 1), "regex_mwords": round(scan / 1e6, 2)}


def varied(paragraph: str, copy: int, rng: random.Random) -> str:
    """One paragraph of copy `copy`: about one word in eight swapped with its neighbour."""
    words = paragraph.split(" ")
    for i in range(len(words) - 1):
        if rng.random() < 0.125:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_corpus(path: Path, megabytes: float, blank_lines: bool = True) -> int:
    """Write the varied built-in corpus to path until it holds `megabytes` MB; its size in bytes.

    With blank_lines False every paragraph is flattened to one line per sentence-ish line and no
    blank line appears anywhere: the file is one long run of lines.
    """
    from lmforge.data.builtin import python_docs

    paragraphs = [p for _, text in python_docs() for p in text.split("\n\n") if p.strip()]
    rng = random.Random(0)
    target = int(megabytes * 1e6)
    size = copy = 0
    with path.open("w", encoding="utf-8") as out:
        while size < target:
            copy += 1
            for paragraph in paragraphs:
                text = varied(paragraph, copy, rng)
                if copy > 1 and rng.random() < 0.05:
                    text = f"(copy {copy}) {text}"
                block = text + ("\n\n" if blank_lines else "\n")
                out.write(block)
                size += len(block.encode("utf-8"))
                if size >= target:
                    break
    return path.stat().st_size


def source_of(commit: str, into: Path) -> Path:
    """The src/ directory of `commit`, extracted with git archive (the checkout is untouched)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
        capture_output=True,
        check=True,
    ).stdout
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def timed_prepare(src: Path, corpus: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Run `lmforge prepare` from the package in src; wall seconds and the peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = (
        "import sys, lmforge; "
        f"assert lmforge.__file__.startswith({str(src)!r}), lmforge.__file__; "
        "from lmforge.cli.main import main; sys.exit(main())"
    )
    command = [sys.executable, "-c", code, "prepare", "--input", str(corpus), "--out", str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--overwrite", *extra], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"prepare from {src} failed with status {status}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def tiktoken_encoding(tokenizer_path: Path) -> Any:
    """A tiktoken Encoding with the same byte-level BPE vocabulary and ids as tokenizer_path."""
    import tiktoken

    model = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    byte_of = byte_level_alphabet()
    ranks = {
        bytes(byte_of[ch] for ch in token): rank
        for token, rank in model["model"]["vocab"].items()
        if token != "<|endoftext|>"
    }
    special = {t["content"]: t["id"] for t in model["added_tokens"]}
    return tiktoken.Encoding(
        "lmforge-bench", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens=special
    )


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: character -> byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    stand_in = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in stand_in.items()}


def encoding_round(texts: list[str], tokenizer_json: str, encoding: Any, threads: int) -> dict:
    """One timing of each side on the same texts: lmforge's shard encoder (worker processes
    started afresh, as prepare starts them) and tiktoken's batch encoder."""
    from lmforge.data.token_encoding import encode_texts

    start = time.perf_counter()
    ours = encode_texts(tokenizer_json, texts, batch_chars=4_000_000, workers=threads)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = sum(map(len, encoding.encode_ordinary_batch(texts, num_threads=threads)))
    theirs_s = time.perf_counter() - start
    return {"lmforge_s": ours_s, "tiktoken_s": theirs_s, "tokens": (ours, theirs)}


def identical_share(texts: list[str], tokenizer_json: str, encoding: Any) -> float:
    """The share of documents both sides encode to the same ids (the cross-check)."""
    from lmforge.data.token_encoding import PieceEncoder

    ours = PieceEncoder(tokenizer_json).encode(texts)
    theirs = encoding.encode_ordinary_batch(texts)
    return sum(a.tolist() == b for a, b in zip(ours, theirs, strict=True)) / len(texts)


def measure_encoding(corpus: Path, tokenizer_path: Path, rounds: int) -> dict[str, Any]:
    from lmforge.data.corpus import stream_corpus

    documents, _ = stream_corpus([str(corpus)])
    texts = [d.text for d in documents]
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
    encoding = tiktoken_encoding(tokenizer_path)
    threads = os.cpu_count() or 1
    encoding_round(texts[:50], tokenizer_json, encoding, threads)  # warm-up
    results = [encoding_round(texts, tokenizer_json, encoding, threads) for _ in range(rounds)]
    ours = statistics.median(r["lmforge_s"] for r in results)
    theirs = statistics.median(r["tiktoken_s"] for r in results)
    return {
        "megabytes": round(megabytes, 1),
        "threads_each": threads,
        "lmforge_mb_s": round(megabytes / ours, 2),
        "tiktoken_mb_s": round(megabytes / theirs, 2),
        "ratio_to_tiktoken": round(theirs / ours, 3),
        "tokens_lmforge_tiktoken": results[-1]["tokens"],
        "identical_documents": round(identical_share(texts[::10], tokenizer_json, encoding), 4),
    }


def measure_prepare(args: argparse.Namespace, work: Path, corpus: Path) -> dict[str, Any]:
    before_src = source_of(args.before, work / "before")
    after_src = ROOT / "src"
    extra = ["--tokenizer", "bpe", "--vocab-size", str(args.vocab_size)]
    megabytes = corpus.stat().st_size / 1e6
    sides = {
        "before": (before_src, extra),
        "after": (after_src, extra),
        "after_full_training": (after_src, [*extra, "--tokenizer-sample-mb", "0"]),
    }
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side, (src, flags) in sides.items():
            run = timed_prepare(src, corpus, work / f"out-{side}", flags)
            runs[side].append(run)
            print(
                f"round {round_ + 1} {side}: {run['seconds']:.1f} s, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    median = {s: statistics.median(r["seconds"] for r in runs[s]) for s in runs}
    return {
        "megabytes": round(megabytes, 1),
        "before_commit": args.before,
        "before_mb_s": round(megabytes / median["before"], 2),
        "after_mb_s": round(megabytes / median["after"], 2),
        "after_full_training_mb_s": round(megabytes / median["after_full_training"], 2),
        "speedup": round(median["before"] / median["after"], 2),
        "speedup_full_training": round(median["before"] / median["after_full_training"], 2),
        "val_tokens": {side: val_tokens(work / f"out-{side}") for side in sides},
        "peak_rss_mb": {s: round(max(r["peak_rss_mb"] for r in runs[s])) for s in runs},
        "tokenizer": str(work / "out-after" / "tokenizer.json"),
    }


def val_tokens(out: Path) -> int:
    """Tokens of the validation split: fewer for the same text means a tighter tokenizer."""
    return int(json.loads((out / "meta.json").read_text())["splits"]["val"]["tokens"])


def measure_rss(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus = work / f"no-blank-lines-{args.rss_mb}mb.txt"
    if not corpus.exists():
        build_corpus(corpus, args.rss_mb, blank_lines=False)
    extra = ["--tokenizer", "bpe", "--vocab-size", str(args.vocab_size)]
    run = timed_prepare(ROOT / "src", corpus, work / "out-rss", extra)
    return {
        "megabytes": round(corpus.stat().st_size / 1e6, 1),
        "seconds": round(run["seconds"], 1),
        "peak_rss_mb": round(run["peak_rss_mb"]),
        "target_mb": 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size in megabytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="a9b2317", help="the commit to compare against")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--rss-mb", type=float, default=0.0, help="peak-RSS run on this many MB")
    parser.add_argument("--only", choices=("prepare", "encoding", "rss"), default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lmforge-prep")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count()}
    result["calibration_before"] = calibration()
    print(f"{result['cpu']}, {result['cores']} cores; calibration {result['calibration_before']}")
    if args.only == "rss" or args.rss_mb:
        result["rss"] = measure_rss(args, args.work)
        print(f"peak RSS: {result['rss']}", flush=True)
    if args.only in (None, "prepare", "encoding"):
        corpus = args.work / f"corpus-{args.mb:g}mb.txt"
        if not corpus.exists():
            build_corpus(corpus, args.mb)
        tokenizer = args.work / "out-after" / "tokenizer.json"
        if args.only != "encoding":
            result["prepare"] = measure_prepare(args, args.work, corpus)
            print(f"prepare: {result['prepare']}", flush=True)
        if not tokenizer.exists():
            timed_prepare(
                ROOT / "src",
                corpus,
                args.work / "out-after",
                ["--tokenizer", "bpe", "--vocab-size", str(args.vocab_size)],
            )
        result["encoding"] = measure_encoding(corpus, tokenizer, args.rounds)
        print(f"encoding: {result['encoding']}", flush=True)
    result["calibration_after"] = calibration()
    result["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
