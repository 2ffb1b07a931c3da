"""lmforge: from raw text to a trained, evaluated language model, readable end to end.

The public names below load on first use (PEP 562), so `import lmforge.config` or
`lmforge --help` does not pay for importing torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
_EXPORTS = {
    "GPT": "lmforge.model",
    "LMForgeError": "lmforge.errors",
    "ModelConfig": "lmforge.config",
    "RunConfig": "lmforge.config",
    "SamplingConfig": "lmforge.config",
    "Tokenizer": "lmforge.tokenizer",
    "TrainConfig": "lmforge.config",
    "generate": "lmforge.generation.loop",
    "generate_text": "lmforge.generation.loop",
    "generate_tokens": "lmforge.generation.loop",
    "load_config": "lmforge.config",
    "load_run": "lmforge.rundir.load",
    "sample_next": "lmforge.generation.sampling",
}
__all__ = [  # spelled out (not sorted(_EXPORTS)) so that tools can read it
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

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from lmforge.config import ModelConfig, RunConfig, SamplingConfig, TrainConfig, load_config
    from lmforge.errors import LMForgeError
    from lmforge.generation.loop import generate, generate_text, generate_tokens
    from lmforge.generation.sampling import sample_next
    from lmforge.model import GPT
    from lmforge.rundir.load import load_run
    from lmforge.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    """`lmforge.GPT` and friends: import the defining module the first time one is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
