"""Training throughput at the GPT-2-small shape: lmforge against transformers' GPT2LMHeadModel.

    python benchmarks/gpt2_small_throughput.py [--batch 2] [--steps 3] [--rounds 2]

Both sides train the same architecture (12 layers, 12 heads, width 768, context 1024, vocabulary
50304, learned positions, biases, tanh-GELU, tied head, no dropout; 124M parameters) on the same
random token batches, with fused AdamW and foreach gradient clipping, in float32 and under bf16
autocast. transformers runs in the fastest configuration a user can switch on: SDPA attention,
`gelu_pytorch_tanh` (one fused kernel instead of `gelu_new`'s chain of ops), fused AdamW.
Ours is a `Trainer` step (the one every `lmforge pretrain` runs). Steps alternate side by side,
round by round, after a warm-up step each; medians. MFU is against the measured matmul peak of
the dtype used (2048³, 2 threads). The last line is JSON.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.batches import clm_batch
from lmforge.model import GPT
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import keep_freed_memory
from lmforge.train.trainer import Trainer

SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}


def peak_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def batches(batch: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (batch, SHAPE["block_size"] + 1)
    return [torch.randint(0, SHAPE["vocab_size"], shape, generator=generator) for _ in range(count)]


def our_step(dtype: str, data: list[torch.Tensor]) -> tuple[Callable[[int], None], float]:
    """A Trainer step on our GPT; returns it and the model's FLOPs per token."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SHAPE, bias=True, pos_emb="learned", activation="gelu_tanh"))
    cfg = TrainConfig(max_steps=10**6, warmup_steps=0, dtype=dtype, progress=False)
    trainer = Trainer(model, build_optimizer(model, cfg), None, cfg, clm_loss)

    def step(i: int) -> None:
        trainer.train_batches = lambda s, m: clm_batch(data[i % len(data)])
        trainer.fit(stop_at=trainer.state.step + 1)

    return step, model.flops_per_token()


def their_step(dtype: str, data: list[torch.Tensor]) -> Callable[[int], None]:
    """transformers' GPT2LMHeadModel in its fastest setting, the same optimizer and clipping."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=SHAPE["vocab_size"],
        n_positions=SHAPE["block_size"],
        n_embd=768,
        n_layer=12,
        n_head=12,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_pytorch_tanh",
    )
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def step(i: int) -> None:
        tokens = data[i % len(data)][:, :-1]
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="sequences of 1024 tokens per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    keep_freed_memory()
    data = batches(args.batch, 4)
    tokens = args.batch * SHAPE["block_size"]
    peaks = {"float32": peak_gflops(torch.float32), "bfloat16": peak_gflops(torch.bfloat16)}
    result: dict[str, object] = {"batch": args.batch, "tokens_per_step": tokens}
    for dtype in args.dtypes.split(","):
        ours, flops_per_token = our_step(dtype, data)
        theirs = their_step(dtype, data)
        ours(0), theirs(0)  # warm-up
        times: dict[str, list[float]] = {"ours": [], "transformers": []}
        for round_index in range(args.rounds):
            order = [("ours", ours), ("transformers", theirs)]
            for name, step in order if round_index % 2 == 0 else reversed(order):
                for i in range(args.steps):
                    start = time.perf_counter()
                    step(i + 1)
                    times[name].append(time.perf_counter() - start)
        for name, seconds in times.items():
            rate = tokens / statistics.median(seconds)
            result[f"{name}_{dtype}_tokens_per_s"] = round(rate, 1)
            result[f"{name}_{dtype}_mfu"] = round(rate * flops_per_token / peaks[dtype] / 1e9, 3)
        result[f"speedup_{dtype}"] = round(
            result[f"ours_{dtype}_tokens_per_s"] / result[f"transformers_{dtype}_tokens_per_s"], 3
        )
        del ours, theirs
    best = {
        side: max((result[f"{side}_{d}_tokens_per_s"], d) for d in args.dtypes.split(","))
        for side in ("ours", "transformers")
    }
    result["ours_fastest"] = {"dtype": best["ours"][1], "tokens_per_s": best["ours"][0]}
    result["transformers_fastest"] = {
        "dtype": best["transformers"][1],
        "tokens_per_s": best["transformers"][0],
    }
    result["speedup_fastest_vs_fastest"] = round(best["ours"][0] / best["transformers"][0], 3)
    result["peak_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
    result["flops_per_token"] = flops_per_token
    result["torch"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
