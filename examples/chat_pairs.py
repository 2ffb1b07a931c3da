"""Question -> answer conversations about Python, made offline from the running Python, for
`lmforge finetune sft`.

    python examples/chat_pairs.py --out data/chat [--max-pairs 3000]

Writes train.jsonl and valid.jsonl, one {"messages": [{"role": "user", ...}, {"role":
"assistant", ...}]} conversation per line:

- from the reference documentation (pydoc topics): "Explain the "for" statement." -> the first
  sentences of that topic;
- from the standard library's docstrings (read with `ast`, nothing imported): "What does
  json.dumps do?" or "What is csv.DictReader?" -> the first sentence of its docstring.

Every answer is text the pretraining corpus `builtin:python-docs` holds next to the name, so
fine-tuning teaches the question -> answer format over what pretraining saw. The split is by a
hash of the question: one in twenty goes to valid, the same on every run.
"""

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LMForgeError
from lmforge.rundir.files import write_text_atomic

SKIPPED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages"})
MIN_ANSWER, MAX_ANSWER = 20, 200
VALID_SHARE = 20  # one question in this many is held out
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]'\"`])[.!?](?=\s|$)")


def first_sentences(paragraph: str, limit: int) -> str:
    """Whole sentences from the start of a paragraph (at least one), while they fit in limit
    characters; whitespace collapsed. A paragraph that ends in a colon (before a grammar rule
    or an example) ends there, with a full stop."""
    text = " ".join(paragraph.split())
    if text.endswith(":"):
        text = text[:-1] + "."
    answer = ""
    for match in SENTENCE_END.finditer(text):
        candidate = text[: match.end()]
        if answer and len(candidate) > limit:
            break
        answer = candidate
    return answer


def topic_pairs() -> Iterator[tuple[str, str]]:
    """("Explain <title>.", its first prose sentences) for each pydoc topic."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        title, _, body = topics[key].partition("\n")
        prose = [p for p in body.split("\n\n") if is_prose(p)]
        if not prose:
            continue
        answer = first_sentences(prose[0], MAX_ANSWER)
        if len(answer) >= MIN_ANSWER:
            subject = title.strip()
            if subject.startswith("The ") or not any(c.isupper() for c in subject[1:]):
                subject = subject[0].lower() + subject[1:]  # "the Null Object", "comparisons"
            yield f"Explain {subject}.", answer


def is_prose(paragraph: str) -> bool:
    """A paragraph of sentences, not a heading underline, grammar rule or indented example."""
    text = paragraph.strip("\n")
    return (
        bool(text)
        and text[0].isalpha()
        and "::=" not in text
        and not text.startswith(("New in", "Changed in", "Deprecated"))
        and not set(text.splitlines()[-1]) <= set("*=-")
    )


def docstring_pairs() -> Iterator[tuple[str, str]]:
    """("What does m.f do?" / "What is m.C?", the docstring's first sentence) for the public
    module-level functions and classes of the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/__init__.py")):
        relative = path.relative_to(stdlib)
        module = relative.parts[0].removesuffix(".py")
        if module.startswith("_") or SKIPPED_DIRS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            pair = definition_pair(node, module)
            if pair is not None:
                yield pair


def definition_pair(node: ast.stmt, module: str) -> tuple[str, str] | None:
    """The question and answer for one public function or class, if its docstring has a
    usable first sentence."""
    if not isinstance(node, ast.ClassDef | ast.FunctionDef) or node.name.startswith("_"):
        return None
    doc = ast.get_docstring(node)
    if not doc or doc.startswith(node.name):  # "name(args) -> ..." signature lines
        return None
    answer = first_sentences(doc.split("\n\n")[0], MAX_ANSWER)
    if not MIN_ANSWER <= len(answer) <= MAX_ANSWER:
        return None
    name = f"{module}.{node.name}"
    question = f"What is {name}?" if isinstance(node, ast.ClassDef) else f"What does {name} do?"
    return question, answer


def is_valid(question: str) -> bool:
    """Whether a question is held out: by a hash that is the same in every process."""
    return hashlib.sha256(question.encode()).digest()[0] % VALID_SHARE == 0


def conversation(question: str, answer: str) -> str:
    """One JSONL line in the messages format `finetune sft` and `evaluate --sft` read."""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}, ensure_ascii=False) + "\n"


def write_pairs(out: Path, max_pairs: int, overwrite: bool) -> dict[str, int]:
    pairs = dict(topic_pairs())
    for question, answer in docstring_pairs():
        pairs.setdefault(question, answer)
    chosen = sorted(pairs.items())[:max_pairs] if max_pairs else sorted(pairs.items())
    lines: dict[str, list[str]] = {"train": [], "valid": []}
    for question, answer in chosen:
        lines["valid" if is_valid(question) else "train"].append(conversation(question, answer))
    paths = {split: out / f"{split}.jsonl" for split in lines}
    existing = [path for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise LMForgeError(f"{existing[0]} exists; choose another --out or pass --overwrite")
    for split, rows in lines.items():
        write_text_atomic(paths[split], "".join(rows))
    return {split: len(rows) for split, rows in lines.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--max-pairs", type=int, default=0, help="keep at most this many (0: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        if args.max_pairs < 0:
            raise LMForgeError(f"--max-pairs {args.max_pairs}: use 0 (all) or more")
        counts = write_pairs(args.out, args.max_pairs, args.overwrite)
    except LMForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, n in counts.items():
        print(f"{split}: {n} conversations -> {args.out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
