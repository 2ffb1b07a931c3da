"""A text classification task anyone has offline: standard-library docstrings labelled by the
family of the module they come from (text, numbers, files, network, concurrency, formats).

    python examples/docstring_topics.py --out data/topics [--per-family 250]

Writes train.tsv, valid.tsv and test.tsv (columns `text` and `label`; about 80/10/10). Each
example is the first paragraph of one docstring of the running Python's standard library, read
with `ast` (nothing is imported or downloaded), with no module or function name in it. The
split is by a hash of the documented name, so it is the same on every run; the same modules
appear in every split, and what is held out is the docstring.
"""

import argparse
import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LMForgeError
from lmforge.rundir.files import write_text_atomic

FAMILIES: dict[str, tuple[str, ...]] = {
    "text": (
        "string",
        "re",
        "textwrap",
        "difflib",
        "unicodedata",
        "stringprep",
        "html",
        "codecs",
        "gettext",
        "locale",
        "encodings",
        "shlex",
        "pprint",
        "reprlib",
    ),
    "numbers": (
        "decimal",
        "_pydecimal",
        "fractions",
        "statistics",
        "random",
        "numbers",
        "colorsys",
        "_pylong",
    ),
    "files": (
        "os",
        "shutil",
        "pathlib",
        "glob",
        "fnmatch",
        "tempfile",
        "filecmp",
        "fileinput",
        "stat",
        "genericpath",
        "posixpath",
        "ntpath",
        "io",
        "_pyio",
    ),
    "network": (
        "http",
        "urllib",
        "email",
        "smtplib",
        "ftplib",
        "poplib",
        "imaplib",
        "socket",
        "ssl",
        "mailbox",
        "xmlrpc",
        "socketserver",
        "ipaddress",
        "mimetypes",
        "nntplib",
        "wsgiref",
    ),
    "concurrency": (
        "threading",
        "multiprocessing",
        "asyncio",
        "concurrent",
        "queue",
        "sched",
        "subprocess",
        "selectors",
        "signal",
    ),
    "formats": (
        "json",
        "csv",
        "pickle",
        "zipfile",
        "tarfile",
        "gzip",
        "bz2",
        "lzma",
        "configparser",
        "plistlib",
        "xml",
        "base64",
        "shelve",
        "dbm",
        "sqlite3",
        "tomllib",
        "quopri",
        "netrc",
        "pickletools",
    ),
}
SPLITS = (("train", 8), ("valid", 1), ("test", 1))  # shares out of 10
MIN_CHARS, MAX_CHARS = 40, 300


def family_of(relative: Path) -> str | None:
    """The family of a stdlib file from its top-level module or package name, if it has one."""
    top = relative.parts[0].removesuffix(".py")
    if "test" in relative.parts or "tests" in relative.parts:
        return None
    return next((family for family, tops in FAMILIES.items() if top in tops), None)


def first_paragraph(doc: str) -> str:
    """The docstring's first paragraph on one line, cut at a word to at most MAX_CHARS."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    if len(paragraph) > MAX_CHARS:
        paragraph = paragraph[:MAX_CHARS].rsplit(" ", 1)[0]
    return paragraph


def documented(tree: ast.AST, name: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of a module and its public classes and functions."""
    doc = ast.get_docstring(tree)
    if doc:
        yield name, doc
    for child in ast.iter_child_nodes(tree):
        public = not getattr(child, "name", "_").startswith("_")
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and public:
            yield from documented(child, f"{name}.{child.name}")


def docstrings() -> Iterator[tuple[str, str, str]]:
    """(qualified name, text, family) of every usable stdlib docstring, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        family = family_of(relative)
        if family is None:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        module = ".".join(relative.with_suffix("").parts)
        for name, doc in documented(tree, module):
            text = first_paragraph(doc)
            if len(text) >= MIN_CHARS and not re.search(r"[\t\r]", text):
                yield name, text, family


def stable_hash(name: str) -> int:
    """A hash of a name that, unlike hash(), is the same in every process."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def balanced_examples(per_family: int) -> list[tuple[str, str, str]]:
    """At most per_family examples of each family (those with the smallest hashes), each text
    once: a text found in two places is kept only where it is first seen."""
    seen: set[str] = set()
    by_family: dict[str, list[tuple[str, str, str]]] = {family: [] for family in FAMILIES}
    for name, text, family in docstrings():
        if text not in seen:
            seen.add(text)
            by_family[family].append((name, text, family))
    chosen = []
    for rows in by_family.values():
        chosen += sorted(rows, key=lambda row: stable_hash(row[0]))[:per_family]
    return sorted(chosen)


def split_of(name: str) -> str:
    """train, valid or test, from the name's hash: 8, 1 and 1 tenths."""
    bucket = stable_hash("split:" + name) % 10
    for split, share in SPLITS:
        if bucket < share:
            return split
        bucket -= share
    raise AssertionError("the shares add up to 10")


def write_splits(out: Path, examples: list[tuple[str, str, str]], overwrite: bool) -> None:
    splits: dict[str, list[str]] = {split: [] for split, _ in SPLITS}
    for name, text, family in examples:
        splits[split_of(name)].append(f"{text}\t{family}\n")
    existing = [out / f"{split}.tsv" for split in splits if (out / f"{split}.tsv").exists()]
    if existing and not overwrite:
        raise LMForgeError(f"{existing[0]} exists; choose another --out or pass --overwrite")
    for split, rows in splits.items():
        write_text_atomic(out / f"{split}.tsv", "text\tlabel\n" + "".join(rows))
        print(f"{split}: {len(rows)} examples -> {out / f'{split}.tsv'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--per-family", type=int, default=250, help="examples per label")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        if args.per_family < 10:
            raise LMForgeError(f"--per-family {args.per_family} is too few; use at least 10")
        examples = balanced_examples(args.per_family)
        write_splits(args.out, examples, args.overwrite)
    except LMForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {f: sum(row[2] == f for row in examples) for f in FAMILIES}
    print("labels: " + ", ".join(f"{family} {n}" for family, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
