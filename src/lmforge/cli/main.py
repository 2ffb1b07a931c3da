"""The `lmforge` command line: the parser of every verb (each added by its module in cli/) and
main(), the only place that turns an LMForgeError into `error: ...` and an exit code."""

import argparse
import logging
import os
import sys
from pathlib import Path

from lmforge.cli import (
    chat,
    compress,
    estimate,
    evaluate,
    finetune,
    generate,
    harness,
    inspect,
    interop,
    lora,
    predict,
    prepare,
    pretrain,
    serve,
)
from lmforge.config import all_keys, load_config, to_dict
from lmforge.errors import Interrupted, LMForgeError

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
  lmforge finetune classify --resume runs/sst
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train, sample and evaluate language models, from raw text.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    prepare.add_prepare(verbs)
    pretrain.add_pretrain(verbs, _config_keys_epilog())
    generate.add_generate(verbs)
    chat.add_chat(verbs)
    serve.add_serve(verbs)
    harness.add_harness(verbs)
    evaluate.add_evaluate(verbs)
    finetune.add_finetune(verbs, _config_keys_epilog())
    predict.add_predict(verbs)
    interop.add_interop(verbs)
    compress.add_compress(verbs)
    lora.add_lora(verbs)
    estimate.add_estimate(verbs)
    inspect.add_inspect(verbs)
    config = verbs.add_parser("config", help="show every config key with its default")
    config.add_argument("action", choices=["show"])
    config.add_argument("--config", type=Path, help="show this file's resolved values")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _run_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    values = to_dict(cfg)
    for key, _, help in all_keys():
        section, name = key.split(".")
        print(f"{key:<26} {values[section][name]!r:<12} {help}")


def _worker_prefix() -> str:
    """`rank 1: ` in a worker of a multi-process launch: a failing rank says which it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"rank {os.environ['RANK']}: "
    return ""


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted run: the same verb (and task or method) with --resume."""
    run = getattr(args, "resume", None) or getattr(args, "out", None) or "RUN"
    words = ["lmforge", args.verb, getattr(args, "task", None) or getattr(args, "method", None)]
    return " ".join(str(w) for w in [*words, "--resume", run] if w)


def _report_interrupted(exc: Interrupted, args: argparse.Namespace) -> int:
    """One line from one process (rank 0 under torchrun; none from a --nproc launcher, whose
    rank 0 said it), and exit 128 + the signal's number."""
    if os.environ.get("RANK", "0") == "0" and exc.step >= 0:
        print(f"{exc}; continue with: {_resume_hint(args)}", file=sys.stderr)
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmforge` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # --nproc starts workers with the same command line
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    handlers = {
        "prepare": prepare.run_prepare,
        "pretrain": pretrain.run_pretrain,
        "generate": generate.run_generate,
        "chat": chat.run_chat,
        "serve": serve.run_serve,
        "harness": harness.run_harness,
        "evaluate": evaluate.run_evaluate,
        "compress": compress.run_compress,
        "lora": lora.run_lora,
        "finetune": finetune.run_finetune,
        "predict": predict.run_predict,
        "import": interop.run_interop,
        "export": interop.run_interop,
        "config": _run_config,
        "estimate": estimate.run_estimate,
        "inspect": inspect.run_inspect,
    }
    try:
        handlers[args.verb](args)
    except Interrupted as exc:
        return _report_interrupted(exc, args)
    except LMForgeError as exc:
        print(f"error: {_worker_prefix()}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; a training run continues from its last checkpoint with --resume RUN "
            "(`lmforge pretrain --resume RUN`, `lmforge finetune classify --resume RUN`, ...)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
