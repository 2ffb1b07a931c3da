"""Peak memory of `lmforge import hf` on a ~0.5B-parameter bf16 checkpoint.

    python benchmarks/import_memory.py [--keep DIR]

Writes a Qwen2ForCausalLM with Qwen2.5-0.5B's config (random weights, bf16 safetensors) and a
tokenizer.json of the same vocabulary size into a temporary directory, runs `lmforge import hf`
on it in a child process, and reports the child's peak resident memory against the model's
fp32 size (the size of what lmforge keeps). Run it alone.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# Qwen2.5-0.5B's config.json (the shape only)
QWEN25_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}


def write_checkpoint(directory: Path) -> int:
    """The bf16 checkpoint and a tokenizer of the same vocabulary; returns the parameter count."""
    config = Qwen2Config(**QWEN25_05B)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, config.vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(directory / "tok.json"))
    PreTrainedTokenizerFast(tokenizer_file=str(directory / "tok.json")).save_pretrained(directory)
    (directory / "tok.json").unlink()
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="write the checkpoint here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        source = root / "qwen25-05b-random"
        params = write_checkpoint(source)
        files = sum(f.stat().st_size for f in source.glob("*.safetensors"))
        start = time.perf_counter()
        command = [sys.executable, "-m", "lmforge", "-q", "import", "hf", str(source)]
        subprocess.run([*command, "--out", str(root / "run"), "--overwrite"], check=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        fp32 = params * 4
        print(
            json.dumps(
                {
                    "parameters": params,
                    "checkpoint_bytes_bf16": files,
                    "fp32_bytes": fp32,
                    "peak_rss_bytes": peak,
                    "peak_over_fp32": round(peak / fp32, 2),
                    "import_seconds": round(seconds, 1),
                    "torch": torch.__version__,
                }
            )
        )


if __name__ == "__main__":
    main()
