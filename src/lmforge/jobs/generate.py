"""`lmforge generate`: continue one prompt (streamed) or every line of a prompts file."""

from collections.abc import Iterator
from pathlib import Path

from lmforge.config import SamplingConfig
from lmforge.errors import DataError, LMForgeError
from lmforge.generation.loop import generate as generate_completions
from lmforge.generation.loop import generate_text
from lmforge.rundir.files import read_utf8
from lmforge.rundir.load import load_run


def generate(
    run_dir: Path, prompt: str, sampling: SamplingConfig, stop: list[str], which: str = "latest"
) -> Iterator[str]:
    """Stream text continuing `prompt` from a run's model."""
    _, model, tokenizer = load_run(run_dir, which)
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
) -> Iterator[tuple[str, str]]:
    """(prompt, completion) for every prompt of a file, in order, decoded batch_size at a time."""
    if batch_size < 1:
        raise LMForgeError("--batch-size must be >= 1")
    prompts = read_prompts(prompts_file)
    _, model, tokenizer = load_run(run_dir, which)
    completions = generate_completions(model, tokenizer, prompts, sampling, stop, batch_size)
    return zip(prompts, completions, strict=True)
