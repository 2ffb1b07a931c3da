"""Shared pieces of the interop tests: a Unicode torture text and twin-building helpers."""

from pathlib import Path

import torch

from lmforge.config import ModelConfig, RunConfig
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.load import build_model
from lmforge.tokenizer import Tokenizer

TORTURE = (
    "Héllo wörld — naïve café, ñandú; 日本語のテキスト、中文字符 🤖🚀 e\u0301 ﬁne\t tabs\n\n"
    "  double  spaces ¿¡Ω≈ç√∫ \u200bzero-width 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩‍👩‍👧 Ελληνικά русский العربية "
    "don't I'm 12,345.67 <|endoftext|> [CLS] trailing   "
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Pack my box with five dozen liquor jugs! How vexingly quick daft zebras jump. " * 20,
    "Héllo wörld, naïve café; 日本語 テキスト 🤖 numbers 12345 and symbols {}[]()<>. " * 20,
]


def scaled_init(model: torch.nn.Module, std: float = 0.15, seed: int = 0) -> None:
    """Weights large enough that attention is sharp: a wrong head or rotary layout shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gains stay near 1
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def random_ids(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def right_padding(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) attention mask, 1 on the first lengths[i] positions."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def tiny_run(directory: Path, tokenizer: Tokenizer, **model: object) -> Path:
    """An lmforge run directory holding a small GPT (scaled init) with tokenizer's vocabulary."""
    cfg = RunConfig(
        model=ModelConfig(
            vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=32, block_size=48, **model
        )
    )
    torch.manual_seed(0)
    net = build_model(cfg)
    scaled_init(net)
    ckpt.write_run_files(directory, cfg, tokenizer)
    ckpt.save_weights(net, directory / layout.MODEL_FILE)
    return directory


def hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int = 64) -> list[int]:
    """transformers' greedy generate of exactly new_tokens tokens after a (1, T) prompt."""
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, prompt.shape[1] :].tolist()
