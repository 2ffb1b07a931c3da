"""lmforge: from raw text to a trained, evaluated language model, readable end to end."""

from lmforge.checkpoint import load_run
from lmforge.config import ModelConfig, RunConfig, SamplingConfig, TrainConfig, load_config
from lmforge.errors import LMForgeError
from lmforge.generate import generate, generate_text, generate_tokens, sample_next
from lmforge.model import GPT
from lmforge.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = [
    "GPT",
    "LMForgeError",
    "ModelConfig",
    "RunConfig",
    "SamplingConfig",
    "Tokenizer",
    "TrainConfig",
    "generate",
    "generate_text",
    "generate_tokens",
    "load_config",
    "load_run",
    "sample_next",
]
