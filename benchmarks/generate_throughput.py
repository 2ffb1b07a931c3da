"""Greedy decoding speed of lmforge against transformers' `generate`, same weights.

    python benchmarks/generate_throughput.py [--model gpt2|smollm2-135m] [--rounds 3]
                                             [--new-tokens 128]

A random-initialised transformers model — GPT2LMHeadModel of the GPT-2-small shape (124M), or
LlamaForCausalLM with SmolLM2-135M's config (RMSNorm, SwiGLU, RoPE, 9 query / 3 key-value heads,
tied embeddings) — is converted in memory to our GPT, so both decode with identical weights.
Batch 1, a 16-token prompt, 128 new tokens, greedy, KV cache on both sides; ours in the dtype
`--dtype auto` picks on this CPU (logged and printed), transformers in fp32 and in bf16, each
figure compared with transformers' faster one; runs alternate so all see the same machine speed.
The greedy tokens are checked identical in fp32.
Also: batch-8 throughput, the time to the first new token of a 512-token prompt (prefill, through
`generate` on both sides), a calibration matmul, and the share of the memory-read
limit (weight bytes per token × tokens/s ÷ measured read bandwidth). The last line is JSON.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmforge.config import SamplingConfig
from lmforge.generation.loop import generate_batch_tokens, generate_tokens
from lmforge.interop.hf import model_from_hf
from lmforge.jobs.generate import DTYPES, inference_dtype
from lmforge.model import GPT
from lmforge.rundir.kernel_cache import cpu_model


def read_bandwidth_gbs(gib: int = 1, repeats: int = 5) -> float:
    """Memory read bandwidth: the best of a few sums over a buffer far larger than the caches."""
    buffer = torch.ones(gib * 2**28)  # gib GiB of float32
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def matmul_gflops(n: int = 2048) -> float:
    """Calibration: fp32 n³ matmul speed through torch.matmul, the best of three."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / min(timed(lambda: a @ b) for _ in range(3)) / 1e9


def cpu_flags() -> str:
    """The vector extensions that decide which kernels run (AVX2 / AVX-512 / bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# SmolLM2-135M's config.json (the shape only; the weights here are random)
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def build_twin(name: str) -> torch.nn.Module:
    """The transformers model a run compares against, random-initialised, in eval mode."""
    if name == "smollm2-135m":
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    return GPT2LMHeadModel(GPT2Config()).eval()


def ours_greedy(model: GPT, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    return list(generate_tokens(model, prompt[0].tolist(), sampling))


def hf_greedy(model: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int) -> list[list[int]]:
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, prompt.shape[1] :].tolist()


def ours_batch(model: GPT, prompts: torch.Tensor, new_tokens: int) -> None:
    """Batched greedy decoding through our API (equal-length prompts, so no padding)."""
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    for _ in generate_batch_tokens(model, prompts.tolist(), sampling):
        pass


def ours_first_token(model: GPT, prompt: torch.Tensor) -> None:
    """Prompt to first new token through our API: weight packing, prefill and one argmax."""
    ours_greedy(model, prompt, 1)


def hf_first_token(model: GPT2LMHeadModel, prompt: torch.Tensor) -> None:
    hf_greedy(model, prompt, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["gpt2", "smollm2-135m"], default="gpt2")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed runs per side")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the throughput run")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="our compute dtype; auto: as `lmforge generate --dtype auto` (calibrated, cached)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    hf32 = build_twin(args.model)
    ours = model_from_hf(hf32.config.to_dict(), hf32.state_dict())
    reference = model_from_hf(hf32.config.to_dict(), hf32.state_dict())  # fp32, for the check
    dtype = inference_dtype(ours) if args.dtype == "auto" else args.dtype
    ours = ours.to(DTYPES[dtype])
    hf_bf16 = build_twin(args.model)
    hf_bf16.load_state_dict(hf32.state_dict())
    hfs = {"float32": hf32, "bfloat16": hf_bf16.to(torch.bfloat16)}  # transformers either way
    vocab = hf32.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=g)
    n = args.new_tokens

    same = ours_greedy(reference, prompt, n) == hf_greedy(hf32, prompt, n)[0]
    ours_greedy(ours, prompt, n), hf_greedy(hfs["bfloat16"], prompt, n)  # warm-up
    ours_s, hf_s = [], {name: [] for name in hfs}
    for _ in range(args.rounds):
        ours_s.append(timed(lambda: ours_greedy(ours, prompt, n)))
        for name, model in hfs.items():
            hf_s[name].append(timed(lambda model=model: hf_greedy(model, prompt, n)))
    ours_tps = n / statistics.median(ours_s)
    hf_tps = {name: n / statistics.median(times) for name, times in hf_s.items()}
    hf_best = max(hf_tps, key=hf_tps.get)

    batch = torch.randint(0, vocab, (args.batch, args.prompt_tokens), generator=g)
    ours_batch_tps = (
        args.batch * n / min(timed(lambda: ours_batch(ours, batch, n)) for _ in range(2))
    )
    hf_batch_tps = {
        name: args.batch * n / min(timed(lambda m=m: hf_greedy(m, batch, n)) for _ in range(2))
        for name, m in hfs.items()
    }

    long_prompt = torch.randint(0, vocab, (1, 512), generator=g)
    ours_prefill = min(timed(lambda: ours_first_token(ours, long_prompt)) for _ in range(3))
    hf_prefill = {
        name: min(timed(lambda m=m: hf_first_token(m, long_prompt)) for _ in range(3))
        for name, m in hfs.items()
    }
    hf_fastest_prefill = min(hf_prefill, key=hf_prefill.get)

    bandwidth = read_bandwidth_gbs()
    bytes_per_token = (
        ours.num_params(exclude_position_embedding=True) * ours.lm_head.weight.element_size()
    )
    result = {
        "model": args.model,
        "parameters": ours.num_params(),
        "ours_dtype": dtype,
        "ours_dtype_choice": args.dtype,
        "ours_tokens_per_s": round(ours_tps, 2),
        "hf_tokens_per_s": {k: round(v, 2) for k, v in hf_tps.items()},
        "speedup": round(ours_tps / hf_tps[hf_best], 3),
        "speedup_vs": f"transformers {hf_best} (its faster dtype here)",
        "speedup_vs_hf_float32": round(ours_tps / hf_tps["float32"], 3),
        "greedy_tokens_identical_fp32": same,
        "read_bandwidth_gb_s": round(bandwidth, 1),
        "ours_share_of_read_limit": round(bytes_per_token * ours_tps / (bandwidth * 1e9), 3),
        f"ours_batch{args.batch}_tokens_per_s": round(ours_batch_tps, 1),
        f"hf_batch{args.batch}_tokens_per_s": {k: round(v, 1) for k, v in hf_batch_tps.items()},
        "ours_first_token_512_ms": round(ours_prefill * 1000, 1),
        "hf_first_token_512_ms": {k: round(v * 1000, 1) for k, v in hf_prefill.items()},
        "first_token_ratio_vs_fastest_hf": round(hf_prefill[hf_fastest_prefill] / ours_prefill, 3),
        "ours_runs_s": [round(s, 3) for s in ours_s],
        "matmul_gflops": round(matmul_gflops(), 1),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
