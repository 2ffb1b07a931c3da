"""`lmforge generate`: its flags (one per sampling setting), and the text it prints."""

import argparse
import json
import re
import sys
from pathlib import Path

from lmforge.config import SamplingConfig, all_keys
from lmforge.errors import LMForgeError


def add_generate(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "generate",
        help="sample text from a run (or beam search it)",
        description="Continue a prompt, or every line of --prompts-file. Only the generated text "
        "goes to stdout: one prompt streams as it is produced; a prompts file prints one block "
        "per prompt, in order (or one JSON object per line with --json).",
    )
    p.add_argument("run", type=Path, help="run directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    source.add_argument(
        "--chat",
        metavar="TEXT",
        help="answer TEXT as a user's message, in the run's chat template (stops at its end "
        "of turn)",
    )
    source.add_argument(
        "--prompts-file",
        type=Path,
        metavar="FILE",
        help="continue every line of this UTF-8 file (blank lines skipped), in batches",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default 8)")
    add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=1, help="independent samples of --prompt")
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per completion: {"prompt": ..., "completion": ...}',
    )
    p.add_argument(
        "--checkpoint",
        choices=["latest", "best"],
        default="latest",
        help="the latest weights or those with the best validation loss",
    )


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """One flag per SamplingConfig field (with its help), --stop and --dtype: generate's and
    chat's."""
    for key, default, help in all_keys(SamplingConfig):
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=help)
        elif key == "temperature":  # None: the default depends on --beams
            p.add_argument(flag, type=float, help=f"{help} (default {default}; 0 with --beams)")
        else:
            kind = float if isinstance(default, float) else int
            shown = "" if default is None else f" (default {default})"
            p.add_argument(flag, type=kind, default=default, help=help + shown)
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STRING",
        help="end a text where this string appears, leaving it out (repeatable); "
        "\\n is a newline and \\t a tab, e.g. --stop '\\n\\n'",
    )
    add_dtype_flag(p)


def unescape(text: str) -> str:
    """Backslash escapes typed in a shell: \\n newline, \\t tab, \\\\ backslash; others stay."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


def sampling_config(args: argparse.Namespace, seed: int | None) -> SamplingConfig:
    """The SamplingConfig of the sampling flags (temperature 0 by default with --beams)."""
    temperature = args.temperature
    if temperature is None:  # beam search does not sample: its default is 0
        temperature = 0.0 if args.beams > 1 else SamplingConfig().temperature
    return SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        beams=args.beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
        seed=seed,
    )


def _print_completion(args: argparse.Namespace, index: int, prompt: str, text: str) -> None:
    """One JSON line with --json, else a block headed `==> N: prompt <==` (blank line between)."""
    if args.json:
        block = json.dumps({"prompt": prompt, "completion": text}, ensure_ascii=False)
    else:
        block = ("\n" if index else "") + f"==> {index + 1}: {prompt} <==\n{text}"
    sys.stdout.write(block + "\n")
    sys.stdout.flush()


def run_generate(args: argparse.Namespace) -> None:
    from lmforge.jobs import generate

    if args.num_samples < 1:
        raise LMForgeError("--num-samples must be >= 1")
    stop = [unescape(s) for s in args.stop]
    if args.prompts_file is not None:
        if args.num_samples != 1:
            raise LMForgeError(
                "--num-samples works with --prompt; repeat lines of the file instead"
            )
        sampling = sampling_config(args, args.seed)
        done = generate.generate_batch(
            args.run,
            args.prompts_file,
            sampling,
            stop,
            args.checkpoint,
            args.batch_size,
            args.dtype,
        )
        for i, (prompt, text) in enumerate(done):
            _print_completion(args, i, prompt, text)
        return
    chat = args.chat is not None
    text = args.chat if chat else args.prompt
    for i in range(args.num_samples):
        sampling = sampling_config(args, None if args.seed is None else args.seed + i)
        pieces = generate.generate(
            args.run, text, sampling, stop, args.checkpoint, chat=chat, dtype=args.dtype
        )
        if args.json:
            _print_completion(args, i, text, "".join(pieces))
            continue
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("\n")


def add_dtype_flag(p: argparse.ArgumentParser) -> None:
    """--dtype of every command that loads a run to generate (generate, chat, serve)."""
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="float32",
        help="compute dtype of the model's weights (default float32); auto: bf16 where this "
        "CPU decodes faster in it (measured once, cached in ~/.cache/lmforge)",
    )
