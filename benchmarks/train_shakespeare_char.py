"""nanoGPT's CPU recipe on tinyshakespeare (char-level), timed beside transformers' GPT-2.

    python benchmarks/train_shakespeare_char.py --data ../shared/data/tinyshakespeare.txt
        [--iters N]

Recipe: 90/10 split, 4 layers, 4 heads, n_embd 128, block 64, batch 12, lr 1e-3 -> 1e-4 cosine,
100 warmup iters, dropout 0, AdamW (0.9, 0.99), weight decay 0.1, clip 1.0. Our steps run through
the real Trainer in chunks; after each chunk a few steps of transformers' GPT2LMHeadModel of the
same width, depth, heads, context and batch are timed, so both see the same machine speed.

transformers runs in two configurations, alternating chunk by chunk:
- fast: what a user can switch on: exact GELU (`activation_function="gelu"`), SDPA attention,
  fused AdamW, and the foreach gradient-norm kernel for clipping;
- default: `GPT2Config`'s defaults (`gelu_new`, a chain of Python ops), SDPA, `torch.optim.AdamW`
  with its default (per-parameter loop on CPU), `clip_grad_norm_` with its CPU default.
Both keep GPT-2's learned positions and biases and clip every step (our Trainer skips the
clipping pass when the norm is already below the threshold). `--pos-emb learned --bias` makes our
side the same architecture. The last line is JSON.
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.batches import clm_batch, step_generator
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import clm_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.runtime import keep_freed_memory
from lmforge.train.trainer import Trainer

BLOCK, BATCH = 64, 12
HF = ("fast", "default")  # transformers configurations timed beside ours


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Calibration: fp32 matmul throughput of this machine right now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def random_windows(data: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - BLOCK - 1, (BATCH,), generator=generator)
    return torch.stack([data[s : s + BLOCK + 1] for s in starts.tolist()])  # (B, T+1)


def build_hf_step(vocab_size: int, train: torch.Tensor, fast: bool):
    """One transformers GPT2LMHeadModel training step of the same shape, batch and optimizer;
    fast: exact GELU, fused AdamW and foreach clipping, else transformers' defaults."""
    from transformers import GPT2Config, GPT2LMHeadModel

    activation = {"activation_function": "gelu"} if fast else {}
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=BLOCK,
        n_embd=128,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        **activation,
    )
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").train()
    kernels = {"fused": True} if fast else {}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, **kernels
    )
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        windows = random_windows(train, generator)
        loss = model(input_ids=windows[:, :-1], labels=windows[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True if fast else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@torch.inference_mode()
def full_val_loss(model: GPT, val: torch.Tensor) -> float:
    """Mean CE over the whole val split, in non-overlapping windows of BLOCK predictions."""
    model.eval()
    starts = range(0, len(val) - BLOCK - 1, BLOCK)
    windows = torch.stack([val[s : s + BLOCK + 1] for s in starts])
    total = 0.0
    for chunk in windows.split(256):
        total += clm_loss(model, clm_batch(chunk)).item() * len(chunk)
    return total / len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000, help="schedule scales to this")
    parser.add_argument("--chunk", type=int, default=25, help="our steps between HF timings")
    parser.add_argument("--hf-steps", type=int, default=4, help="HF steps per chunk (0: none)")
    parser.add_argument("--pos-emb", default="rope", choices=["rope", "learned"])
    parser.add_argument("--bias", action="store_true", help="biases in every layer, as GPT-2")
    parser.add_argument(
        "--activation",
        default="gelu",
        choices=["gelu", "gelu_tanh"],
        help="nanoGPT's recipe uses the exact (erf) GELU",
    )
    parser.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone (lmforge pretrain sets them)",
    )
    args = parser.parse_args()

    allocator_tuned = False if args.default_malloc else keep_freed_memory()
    text = args.data.read_text(encoding="utf-8")
    tokenizer = Tokenizer.train_char([text])
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]

    warmup = max(1, round(100 * args.iters / 2000))
    model_cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=BLOCK,
        n_layer=4,
        n_head=4,
        n_embd=128,
        dropout=0.0,
        bias=args.bias,
        pos_emb=args.pos_emb,
        activation=args.activation,
    )
    train_cfg = TrainConfig(
        max_steps=args.iters,
        batch_size=BATCH,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=warmup,
        beta1=0.9,
        beta2=0.99,
        weight_decay=0.1,
        grad_clip=1.0,
        eval_interval=10**9,
        progress=False,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    model = GPT(model_cfg)
    batches = lambda step, micro: clm_batch(  # noqa: E731
        random_windows(train, step_generator(args.seed, step, micro))
    )
    train_model = torch.compile(model) if args.compile else model
    trainer = Trainer(train_model, build_optimizer(model, train_cfg), batches, train_cfg, clm_loss)
    compile_s = 0.0
    if args.compile:  # compile on a throwaway copy so the timed run starts from step 0
        t0 = time.perf_counter()
        warm = torch.compile(GPT(model_cfg))
        clm_loss(warm, batches(0, 0)).backward()
        compile_s = time.perf_counter() - t0
    hf_steps = {}
    if args.hf_steps:
        hf_steps = {name: build_hf_step(tokenizer.vocab_size, train, name == "fast") for name in HF}
        for name in HF:  # warm-up on the peer's side too (our first chunk is timed like theirs)
            hf_steps[name]()

    calibration = [matmul_gflops()]
    ours_ms: list[float] = []
    hf_ms: dict[str, list[float]] = {name: [] for name in hf_steps}
    start = time.perf_counter()
    while trainer.state.step < args.iters:
        t0 = time.perf_counter()
        done = trainer.state.step
        trainer.fit(stop_at=min(done + args.chunk, args.iters))
        ours_ms.append((time.perf_counter() - t0) * 1000 / (trainer.state.step - done))
        order = list(hf_steps) if len(ours_ms) % 2 else list(reversed(hf_steps))
        for name in order:  # the two peer configurations take turns going first
            for _ in range(args.hf_steps):
                t0 = time.perf_counter()
                hf_steps[name]()
                hf_ms[name].append((time.perf_counter() - t0) * 1000)
    wall = time.perf_counter() - start
    calibration.append(matmul_gflops())

    val_loss = full_val_loss(model, val)
    ms = statistics.median(ours_ms)
    hf_median = {name: statistics.median(times) for name, times in hf_ms.items()}
    tokens_per_s = BATCH * BLOCK / ms * 1000
    gflops = statistics.mean(calibration)
    mfu = model.flops_per_token() * tokens_per_s / (gflops * 1e9)
    result = {
        "iters": trainer.state.step,
        "ms_per_iter": round(ms, 2),
        "tokens_per_s": round(tokens_per_s),
        "val_loss": round(val_loss, 4),
        "train_wall_s_with_hf_interleaved": round(wall, 1),
        **{f"hf_{name}_ms_per_iter": round(hf_median[name], 2) for name in hf_ms},
        **{f"speedup_vs_hf_{name}": round(hf_median[name] / ms, 3) for name in hf_ms},
        "pos_emb": args.pos_emb,
        "bias": args.bias,
        "matmul_gflops": [round(g, 1) for g in calibration],
        "mfu": round(mfu, 3),
        "compile": args.compile,
        "malloc_tuned_for_both": allocator_tuned,
        "compile_s": round(compile_s, 1),
        "params": model.num_params(),
        "val_ppl": round(math.exp(val_loss), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
