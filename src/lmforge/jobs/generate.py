"""`lmforge generate`: continue one prompt (streamed) or every line of a prompts file."""

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from lmforge.config import SamplingConfig
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.errors import DataError, LMForgeError
from lmforge.generation.loop import generate as generate_completions
from lmforge.generation.loop import generate_text
from lmforge.model.onednn import decode_seconds
from lmforge.rundir.files import read_utf8
from lmforge.rundir.kernel_cache import cpu_model, kernel_cache
from lmforge.rundir.load import load_run, read_chat_template
from lmforge.tokenizer import Tokenizer

log = logging.getLogger(__name__)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def load_for_generation(
    run_dir: Path, which: str = "latest", dtype: str = "float32"
) -> tuple[torch.nn.Module, Tokenizer]:
    """A run's model in eval mode, its weights cast to `dtype` (computing in it), and tokenizer;
    `auto` picks bf16 or fp32 by the decoding calibration of this CPU (see inference_dtype)."""
    if dtype not in DTYPE_CHOICES:
        raise LMForgeError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
    _, model, tokenizer = load_run(run_dir, which)
    if dtype == "auto":
        dtype = inference_dtype(model)
    return cast_floating(model, DTYPES[dtype]), tokenizer


def cast_floating(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The model with its floating-point parameters and buffers in dtype. Complex buffers (the
    RoPE rotations) stay complex: `Module.to(dtype)` would cast them to real, dropping the sine
    half of every rotation. Tied weights stay one tensor."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                setattr(module, name, buffer.to(dtype))
    return model


def _largest_linear_shape(model: torch.nn.Module) -> tuple[int, int]:
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return max(shapes, key=lambda s: s[0] * s[1], default=(768, 768))


def inference_dtype(model: torch.nn.Module, cache: Path | None = None) -> str:
    """--dtype auto: bfloat16 where a decoding-sized product with the model's largest weight
    shape measured at least 1.3x faster than in float32 (AMX, avx512_bf16 CPUs; decoding is
    bound by reading the weights, which bf16 halves), else float32; CUDA: bfloat16. The verdict
    is cached per CPU model, torch version and shape in the user's cache directory
    ($XDG_CACHE_HOME/lmforge or ~/.cache/lmforge), so later loads skip the timing."""
    if next(model.parameters()).device.type == "cuda":
        return "bfloat16"
    shape = _largest_linear_shape(model)
    store = kernel_cache(cache)
    key = f"{cpu_model()}|torch {torch.__version__}|decode {shape[0]}x{shape[1]}"
    if key in store.entries:
        choice = store.entries[key]["dtype"]
        log.info("--dtype auto: %s (cached for this CPU: %s)", choice, store.path)
        return choice
    seconds = {name: decode_seconds(shape, DTYPES[name]) for name in ("float32", "bfloat16")}
    choice = "bfloat16" if seconds["bfloat16"] * 1.3 < seconds["float32"] else "float32"
    micros = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in seconds.items())
    log.info("--dtype auto: %s (a %dx%d decoding product: %s)", choice, *shape, micros)
    store.save(key, {"dtype": choice, "seconds": seconds})
    return choice


def chat_prompt(run_dir: Path, tokenizer: Tokenizer, text: str) -> tuple[str, str]:
    """(the prompt of a one-message chat, the text that ends the answer) by the run's chat
    template; a run without one uses lmforge's plain template, and says so."""
    template = read_chat_template(run_dir, tokenizer)
    if template is None:
        log.warning("warning: %s has no chat template; using lmforge's plain one", run_dir)
        template = ChatTemplate(DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or "")
    messages = [{"role": "user", "content": text}]
    return template.render(messages, add_generation_prompt=True), template.end_of_turn()


def generate(
    run_dir: Path,
    prompt: str,
    sampling: SamplingConfig,
    stop: list[str],
    which: str = "latest",
    chat: bool = False,
    dtype: str = "float32",
) -> Iterator[str]:
    """Stream text continuing `prompt` from a run's model; with chat, answer `prompt` as a
    user's message in the run's chat template, stopping at its end of turn."""
    model, tokenizer = load_for_generation(run_dir, which, dtype)
    if chat:
        prompt, end = chat_prompt(run_dir, tokenizer, prompt)
        stop = [*stop, end]
    return generate_text(model, tokenizer, prompt, sampling, stop)


def read_prompts(path: Path) -> list[str]:
    """The prompts of a UTF-8 text file, one per line; blank lines are skipped."""
    text = read_utf8(path, "prompts file")
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path} holds no prompts; write one prompt per line")
    return prompts


def generate_batch(
    run_dir: Path,
    prompts_file: Path,
    sampling: SamplingConfig,
    stop: list[str],
    which: str = "latest",
    batch_size: int = 8,
    dtype: str = "float32",
) -> Iterator[tuple[str, str]]:
    """(prompt, completion) for every prompt of a file, in order, decoded batch_size at a time."""
    if batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    prompts = read_prompts(prompts_file)
    model, tokenizer = load_for_generation(run_dir, which, dtype)
    completions = generate_completions(model, tokenizer, prompts, sampling, stop, batch_size)
    return zip(prompts, completions, strict=True)
