"""Write the built-in corpus `builtin:python-docs` to one plain .txt file: a text file to start
from when you have none of your own.

    python examples/python_docs_text.py --out data/python-docs.txt [--max-chars 500000]

The corpus is the running CPython's reference documentation (pydoc topics) and the docstrings
of its standard library, read with `ast`: nothing is downloaded. Documents are separated by a
blank line, in a fixed order, so the file is the same on every run of the same Python.
"""

import argparse
import sys
from pathlib import Path

from lmforge.data.builtin import python_docs
from lmforge.errors import LMForgeError
from lmforge.rundir.files import write_text_atomic


def corpus_text(max_chars: int) -> tuple[str, int]:
    """The corpus's documents joined by blank lines, stopping before the first one that would
    pass max_chars (0: no limit); the text and how many documents it holds."""
    documents: list[str] = []
    size = 0
    for _, text in python_docs():
        text = text.strip()
        if max_chars and size + len(text) > max_chars:
            if not documents:
                raise LMForgeError(
                    f"--max-chars {max_chars} holds no whole document (the first has "
                    f"{len(text):,} characters); raise it"
                )
            break
        documents.append(text)
        size += len(text) + 2
    return "\n\n".join(documents) + "\n", len(documents)


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file unless the user said --overwrite."""
    if path.exists() and not overwrite:
        raise LMForgeError(f"{path} exists; choose another --out or pass --overwrite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .txt file to write")
    parser.add_argument(
        "--max-chars", type=int, default=0, help="stop at about this many characters (0: all)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        if args.max_chars < 0:
            raise LMForgeError(f"--max-chars {args.max_chars}: use 0 (everything) or more")
        check_target(args.out, args.overwrite)
        text, documents = corpus_text(args.max_chars)
        write_text_atomic(args.out, text)
    except LMForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = text.count("\n")
    print(f"wrote {args.out}: {documents} documents, {lines:,} lines, {len(text):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
