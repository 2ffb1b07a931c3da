"""Load on `lmforge serve`: 1, 4 and 16 concurrent clients, 64 new tokens each.

    python benchmarks/serve_load.py [--run runs/demo] [--rounds 2]

Serves the demo run (if given) and a GPT-2-small-shape model (random weights, imported from a
transformers GPT2LMHeadModel written to a temporary directory) with `--max-batch 16`, and for
each number of clients sends that many greedy /v1/completions requests at once (64 new tokens,
a different 16-token prompt each), `--rounds` times after a warm-up round. Prints the total
generated tokens per second and the p50 / p95 request latency, and the JSON of it all last.
Run it alone: a second process skews the timings.
"""

import argparse
import concurrent.futures
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

CLIENTS = (1, 4, 16)
WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with")
NEW_TOKENS = 64


def gpt2_small_run(root: Path) -> Path:
    """A GPT-2-small-shape run: random weights, a word-level tokenizer of GPT-2's size."""
    source = root / "gpt2-small-random"
    GPT2LMHeadModel(GPT2Config()).save_pretrained(source)
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 50257)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(root / "tok.json"))
    PreTrainedTokenizerFast(tokenizer_file=str(root / "tok.json")).save_pretrained(source)
    run = root / "gpt2-small-run"
    command = [sys.executable, "-m", "lmforge", "-q", "import", "hf", str(source), "--out"]
    subprocess.run([*command, str(run), "--overwrite"], check=True)
    return run


def start(run: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", str(port)]
    server = subprocess.Popen([*command, "--max-batch", "16"])
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not start")


def one_request(base: str, prompt: str) -> tuple[float, int]:
    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0}
    start = time.perf_counter()
    reply = httpx.post(f"{base}/v1/completions", json=body, timeout=600).json()
    return time.perf_counter() - start, reply["usage"]["completion_tokens"]


def load(base: str, clients: int, prompts: list[str]) -> tuple[float, list[float]]:
    """(generated tokens per second over the whole round, each request's latency)."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda p: one_request(base, p), prompts[:clients]))
    seconds = time.perf_counter() - start
    return sum(tokens for _, tokens in done) / seconds, [latency for latency, _ in done]


def measure(name: str, run: Path, rounds: int) -> dict:
    server, base = start(run)
    try:
        prompts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(16)) for i in range(16)]
        if name != "gpt2-small":  # the demo run's BPE reads any text
            prompts = [f"Request {i}: The list type and the dict" for i in range(16)]
        load(base, 4, prompts)  # warm-up
        result = {}
        for clients in CLIENTS:
            rates, latencies = [], []
            for _ in range(rounds):
                rate, times = load(base, clients, prompts)
                rates.append(rate)
                latencies += times
            latencies.sort()
            result[clients] = {
                "tokens_per_s": round(statistics.median(rates), 1),
                "p50_s": round(latencies[len(latencies) // 2], 3),
                "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
            }
            print(f"{name}: {clients:>2} clients: {result[clients]}", flush=True)
        result["largest_batch"] = httpx.get(f"{base}/health").json()["largest_batch"]
        result["16_over_1"] = round(result[16]["tokens_per_s"] / result[1]["tokens_per_s"], 2)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="also the demo run (runs/demo)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            results["demo"] = measure("demo", args.run, args.rounds)
        results["gpt2-small"] = measure("gpt2-small", gpt2_small_run(Path(tmp)), args.rounds)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
