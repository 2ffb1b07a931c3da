"""The `lmforge` command line: one argparse verb per job; the only place that exits."""

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from lmforge import jobs
from lmforge.cli_eval import add_compress, add_evaluate, run_compress, run_evaluate
from lmforge.cli_finetune import add_finetune, add_lora, run_finetune, run_lora
from lmforge.cli_train import (
    add_predict,
    add_prepare,
    add_pretrain,
    run_predict,
    run_prepare,
    run_pretrain,
)
from lmforge.config import SamplingConfig, all_keys, load_config
from lmforge.errors import LMForgeError
from lmforge.estimate import estimate, format_estimate

EXAMPLES = """examples:
  lmforge prepare  --input builtin:python-docs --out data/docs
  lmforge pretrain --config configs/gpt-nano-cpu.yaml --data data/docs --out runs/nano
  lmforge pretrain --resume runs/nano --set train.max_steps=4000
  lmforge generate runs/nano --prompt "The list type" --temperature 0.8 --top-k 50
  lmforge generate runs/nano --prompt "The list type" --beams 4 --stop "\\n\\n"
  lmforge generate runs/nano --prompts-file prompts.txt --batch-size 8 --json
  lmforge evaluate runs/nano
  lmforge evaluate runs/nano --text held-out.txt --stride 64 --json
  lmforge compress quantize runs/nano --int8 --out runs/nano-q8
  lmforge prepare  --input builtin:python-docs --out data/bert --tokenizer wordpiece
  lmforge pretrain --config configs/bert-mini.yaml --data data/bert --out runs/bert
  lmforge finetune classify --base runs/bert --train train.tsv --valid dev.tsv --out runs/sst
  lmforge predict runs/sst --input test.tsv --output predictions.jsonl
  lmforge import hf gpt2 --out runs/gpt2
  lmforge export hf runs/nano --out hf/nano
  lmforge estimate --config configs/gpt-nano-cpu.yaml --set model.vocab_size=4096 \
                   --set dist.strategy=fsdp --world-size 8
  lmforge config show
"""


def _config_keys_epilog() -> str:
    lines = ["config keys (--set section.key=value):"]
    lines += [f"  {key:<26} {default!r:<12} {help}" for key, default, help in all_keys()]
    return "\n".join(lines)


def _add_generate(verbs: argparse._SubParsersAction) -> None:
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
        "--prompts-file",
        type=Path,
        metavar="FILE",
        help="continue every line of this UTF-8 file (blank lines skipped), in batches",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default 8)")
    for key, default, help in all_keys(SamplingConfig):  # one flag per field, with its help
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


def _add_interop(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "import",
        help="turn a Hugging Face model into a run directory",
        description="Import a transformers GPT-2, GPT-NeoX or BERT model as an lmforge run "
        "directory (config.json, model.safetensors, tokenizer.json) for generate and evaluate.",
    )
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face transformers model")
    p.add_argument(
        "source",
        metavar="SRC",
        help="a save_pretrained directory, or a Hub repository id such as gpt2 (downloads)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p = verbs.add_parser(
        "export",
        help="write a run as a Hugging Face model",
        description="Export a run directory as a transformers model directory "
        "(GPT-2, GPT-NeoX for rotary runs, or BERT) that from_pretrained loads offline.",
    )
    p.add_argument("format", choices=["hf"], help="hf: a Hugging Face transformers model")
    p.add_argument("run", type=Path, metavar="RUN", help="run directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _add_estimate(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "estimate",
        help="parameters, FLOPs per token and memory per device of a config",
        description="What a config costs before it runs: parameters, training FLOPs per token "
        "(6N + attention), and memory per device for weights, gradients, AdamW states and "
        "activations under dist.strategy none, ddp or fsdp over --world-size devices.",
    )
    p.add_argument("--config", type=Path, help="YAML/JSON/TOML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--world-size", type=int, default=1, help="devices (processes) training")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_estimate(args: argparse.Namespace) -> None:
    result = estimate(load_config(args.config, args.set), args.world_size)
    print(json.dumps(result) if args.json else format_estimate(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train, sample and evaluate language models, from raw text.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add_prepare(verbs)
    add_pretrain(verbs, _config_keys_epilog())
    _add_generate(verbs)
    add_evaluate(verbs)
    add_finetune(verbs, _config_keys_epilog())
    add_predict(verbs)
    _add_interop(verbs)
    add_compress(verbs)
    add_lora(verbs)
    _add_estimate(verbs)
    config = verbs.add_parser("config", help="show every config key with its default")
    config.add_argument("action", choices=["show"])
    config.add_argument("--config", type=Path, help="show this file's resolved values")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def unescape(text: str) -> str:
    """Backslash escapes typed in a shell: \\n newline, \\t tab, \\\\ backslash; others stay."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


def _sampling(args: argparse.Namespace, seed: int | None) -> SamplingConfig:
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


def _run_generate(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise LMForgeError("--num-samples must be >= 1")
    stop = [unescape(s) for s in args.stop]
    if args.prompts_file is not None:
        if args.num_samples != 1:
            raise LMForgeError(
                "--num-samples works with --prompt; repeat lines of the file instead"
            )
        sampling = _sampling(args, args.seed)
        done = jobs.generate_batch(
            args.run, args.prompts_file, sampling, stop, args.checkpoint, args.batch_size
        )
        for i, (prompt, text) in enumerate(done):
            _print_completion(args, i, prompt, text)
        return
    for i in range(args.num_samples):
        sampling = _sampling(args, None if args.seed is None else args.seed + i)
        pieces = jobs.generate(args.run, args.prompt, sampling, stop, args.checkpoint)
        if args.json:
            _print_completion(args, i, args.prompt, "".join(pieces))
            continue
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("\n")


def _run_interop(args: argparse.Namespace) -> None:
    if args.verb == "import":
        summary = jobs.import_hf(args.source, args.out, args.overwrite)
        what = f"imported {args.source}"
    else:
        summary = jobs.export_hf(args.run, args.out, args.overwrite)
        what = f"exported {args.run}"
    extra = "".join(f", {k} {v}" for k, v in summary.items() if k not in ("out", "params"))
    print(f"{what} -> {summary['out']}: {summary['params']:,} parameters{extra}")


def _run_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    from lmforge.config import to_dict

    values = to_dict(cfg)
    for key, _, help in all_keys():
        section, name = key.split(".")
        print(f"{key:<26} {values[section][name]!r:<12} {help}")


def _worker_prefix() -> str:
    """`rank 1: ` in a worker of a multi-process launch: a failing rank says which it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"rank {os.environ['RANK']}: "
    return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmforge` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    handlers = {
        "prepare": run_prepare,
        "pretrain": run_pretrain,
        "generate": _run_generate,
        "evaluate": run_evaluate,
        "compress": run_compress,
        "lora": run_lora,
        "finetune": run_finetune,
        "predict": run_predict,
        "import": _run_interop,
        "export": _run_interop,
        "config": _run_config,
        "estimate": _run_estimate,
    }
    try:
        handlers[args.verb](args)
    except LMForgeError as exc:
        print(f"error: {_worker_prefix()}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; a run can continue from its last checkpoint with "
            "`lmforge pretrain --resume RUN`",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
