"""Keep docs/theory.md's links to code pointing at the right lines.

Every link there has the form [`name`](../path/to/file.py#L123): `name` is a function, class or
test defined in that file (`Class.method` for a method). This script finds where each name is
defined now and rewrites the line anchors; with --check it only reports links whose file or name
no longer exists, or whose line is stale (exit 1). tests/test_theory_doc.py runs the check.

    python scripts/theory_links.py          # refresh the line numbers in place
    python scripts/theory_links.py --check  # report, change nothing
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "theory.md"
LINK = re.compile(r"\[`(?P<name>[A-Za-z_][\w.]*)`\]\(\.\./(?P<path>[\w/.-]+\.py)#L(?P<line>\d+)\)")


def definition_line(source: list[str], name: str) -> int | None:
    """1-based line of `def name` / `class name` (for "Class.method", the method inside the
    class), or None when the file defines no such name."""
    *outer, last = name.split(".")
    start = 0
    for part in outer:
        start = next((i for i, s in enumerate(source) if re.match(rf"class {part}\b", s)), -1)
        if start < 0:
            return None
    pattern = re.compile(rf"\s*(async\s+)?(def|class)\s+{re.escape(last)}\b")
    for i in range(start, len(source)):
        if pattern.match(source[i]):
            return i + 1
    return None


def problems_and_fixed_text(text: str) -> tuple[list[str], str]:
    """What is wrong with the doc's links, and the doc with every findable anchor refreshed."""
    problems: list[str] = []
    sources: dict[str, list[str]] = {}

    def refresh(match: re.Match[str]) -> str:
        name, path, line = match["name"], match["path"], int(match["line"])
        file = ROOT / path
        if not file.is_file():
            problems.append(f"{path}: no such file (link to {name})")
            return match[0]
        source = sources.setdefault(path, file.read_text(encoding="utf-8").splitlines())
        found = definition_line(source, name)
        if found is None:
            problems.append(f"{path}: defines no {name}")
            return match[0]
        if found != line:
            problems.append(f"{path}#L{line}: {name} is defined at line {found}")
        return f"[`{name}`](../{path}#L{found})"

    return problems, LINK.sub(refresh, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report only; change nothing")
    args = parser.parse_args()
    text = DOC.read_text(encoding="utf-8")
    problems, fixed = problems_and_fixed_text(text)
    if args.check:
        print("\n".join(problems) or f"{len(LINK.findall(text))} links, all current")
        return 1 if problems else 0
    if fixed != text:
        DOC.write_text(fixed, encoding="utf-8")
    unfixable = [p for p in problems if "is defined at line" not in p]
    print("\n".join(unfixable) or "links refreshed")
    return 1 if unfixable else 0


if __name__ == "__main__":
    sys.exit(main())
