"""The built-in corpus `builtin:python-docs`: the running CPython's own documentation, no download.

It joins the reference documentation shipped as `pydoc_data.topics` with the docstrings of the
standard library's modules, classes and functions, read with `ast` (nothing is imported).
"""

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

BUILTIN_PYTHON_DOCS = "builtin:python-docs"
_SKIPPED_DIRS = frozenset(
    {
        "site-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "__pycache__",
    }
)


def python_docs() -> Iterator[tuple[str, str]]:
    """Yield (source name, text) for each pydoc topic and each stdlib module's docstrings."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"{BUILTIN_PYTHON_DOCS}/topics/{name}", topics[name]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _SKIPPED_DIRS & set(relative.parts) or relative.parts[0].startswith("config-"):
            continue
        text = module_docstrings(path, ".".join(relative.with_suffix("").parts))
        if text:
            yield f"{BUILTIN_PYTHON_DOCS}/stdlib/{relative}", text


def module_docstrings(path: Path, module: str) -> str:
    """All docstrings of one source file, each under the qualified name it documents."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return ""
    sections = []
    for qualname, node in _documented_nodes(tree, module):
        doc = ast.get_docstring(node)
        if doc:
            sections.append(f"{qualname}\n\n{doc}")
    return "\n\n".join(sections)


def _documented_nodes(node: ast.AST, qualname: str) -> Iterator[tuple[str, ast.AST]]:
    yield qualname, node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if child.name.startswith("_") and not child.name.startswith("__"):
                continue  # private helpers rarely carry prose worth learning from
            yield from _documented_nodes(child, f"{qualname}.{child.name}")
