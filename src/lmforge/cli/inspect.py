"""`lmforge inspect attention` and `lmforge inspect tokens`: their flags, and the tables or
JSON they print."""

import argparse
import json
from pathlib import Path
from typing import Any

ATTENTION_EXAMPLES = """examples:
  lmforge inspect attention runs/nano --prompt "The cat sat on the mat" --layer 1 --head 0 \\
                            --plot attn.png
  lmforge inspect attention runs/nano --prompt "The cat sat" --layer 1 --plot layer1.png
  lmforge inspect attention runs/nano --prompt "The cat sat" --layer 0 --head 2
  lmforge inspect attention runs/bert --prompt "the cat sat on the mat" --json
"""
TOKENS_EXAMPLES = """examples:
  lmforge inspect tokens runs/nano --prompt "The cat sat on the mat"
  lmforge inspect tokens runs/nano --prompt "The cat sat on the mat" --plot tokens.png
  lmforge inspect tokens runs/bert --prompt "the cat sat on the mat" --json
"""
MATRIX_MAX_TOKENS = 16  # one head's full matrix is printed up to this many tokens


def add_inspect(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "inspect",
        help="look inside a run's model: attention maps and per-token losses of a prompt",
        description="Pictures and numbers of what a run's model does with one prompt.",
    )
    kinds = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    attention = kinds.add_parser(
        "attention",
        help="every head's attention probabilities over the prompt's tokens",
        description="The attention probabilities softmax(QKᵀ/√d + mask) of each head, as the "
        "model computed them for --prompt: row q is how query token q spreads its attention "
        "over the tokens (a GPT's upper triangle is 0: it never looks ahead). Layers and heads "
        "are numbered from 0; without --head every head of the layer is shown as a grid, "
        "without --layer too every layer (a grid of layers × heads).",
        epilog=ATTENTION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(attention, "heat map")
    attention.add_argument("--layer", type=int, metavar="L", help="only this layer (from 0)")
    attention.add_argument("--head", type=int, metavar="H", help="only this head (from 0)")
    tokens = kinds.add_parser(
        "tokens",
        help="the prompt's tokens: pieces, ids and each one's loss",
        description="How the run's tokenizer splits --prompt (each token's text decoded alone, "
        "and its id) and how surprised the model is by each token, in nats: a GPT's "
        "−ln P(token | the tokens before it), none for the first token; a BERT's "
        "pseudo-log-likelihood −ln P(token | all the others), each token masked in turn.",
        epilog=TOKENS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(tokens, "coloured strip of tokens")


def _add_common(p: argparse.ArgumentParser, picture: str) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--prompt", default="", help="the text to inspect")
    p.add_argument("--plot", type=Path, metavar="PNG", help=f"draw the {picture} to this PNG")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.add_argument(
        "--checkpoint",
        choices=["latest", "best"],
        default="latest",
        help="the latest weights or those with the best validation loss",
    )


def run_inspect(args: argparse.Namespace) -> None:
    from lmforge.jobs import inspect

    if args.what == "attention":
        result = inspect.inspect_attention(
            args.run, args.prompt, args.layer, args.head, args.plot, args.overwrite, args.checkpoint
        )
        text = format_attention(result)
    else:
        result = inspect.inspect_tokens(
            args.run, args.prompt, args.plot, args.overwrite, args.checkpoint
        )
        text = format_tokens(result)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif args.plot is not None:
        print(f"{args.what} plot: {result['plot']}")
    else:
        print(text)


def _quoted(piece: str) -> str:
    """A piece in quotes with escapes, so spaces and newlines show."""
    return json.dumps(piece, ensure_ascii=False)


def format_tokens(result: dict[str, Any]) -> str:
    """One line per token (index, id, loss, piece), then the mean loss."""
    lines = [f"{'index':>5}  {'id':>6}  {'loss':>7}  piece"]
    for i, (piece, token, loss) in enumerate(
        zip(result["tokens"], result["ids"], result["loss"], strict=True)
    ):
        shown = "" if loss is None else f"{loss:.3f}"
        lines.append(f"{i:>5}  {token:>6}  {shown:>7}  {_quoted(piece)}")
    mean, scored = result["mean_loss"], sum(v is not None for v in result["loss"])
    if mean is not None:
        lines.append(f"mean {result['loss_kind']} loss {mean:.3f} nats over {scored} tokens")
    return "\n".join(lines)


def format_attention(result: dict[str, Any]) -> str:
    """For each chosen head, each query token's most attended token and its probability; one
    head of a short prompt also as its full matrix."""
    pieces = [_quoted(p) for p in result["tokens"]]
    blocks = []
    for layer, per_head in zip(result["layers"], result["attention"], strict=True):
        for head, matrix in zip(result["heads"], per_head, strict=True):
            lines = [f"layer {layer}, head {head}: query -> most attended token (probability)"]
            for q, row in enumerate(matrix):
                k = max(range(len(row)), key=row.__getitem__)
                lines.append(f"  {q:>3} {pieces[q]:<16} -> {k:>3} {pieces[k]:<16} ({row[k]:.2f})")
            blocks.append("\n".join(lines))
    single = len(blocks) == 1 and len(pieces) <= MATRIX_MAX_TOKENS
    if single:
        blocks.append(_matrix(result["attention"][0][0]))
    return "\n\n".join(blocks)


def _matrix(matrix: list[list[float]]) -> str:
    """The probabilities, a row per query and a column per key, two decimals."""
    header = "query\\key " + " ".join(f"{k:>4}" for k in range(len(matrix)))
    rows = [f"{q:>9} " + " ".join(f"{p:4.2f}" for p in row) for q, row in enumerate(matrix)]
    return "\n".join([header, *rows])
