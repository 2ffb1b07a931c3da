"""Imports point downwards only (../shared/DESIGN.md, Boundaries)."""

import ast
from pathlib import Path

import lmforge

PACKAGE = Path(lmforge.__file__).parent

# module prefix -> lmforge modules it must never import
FORBIDDEN = {
    "lmforge.config": ["lmforge."],  # except errors, checked below
    "lmforge.errors": ["lmforge."],
    "lmforge.model": [
        "lmforge.train",
        "lmforge.data",
        "lmforge.tokenizer",
        "lmforge.jobs",
        "lmforge.checkpoint",
        "lmforge.cli",
        "lmforge.generate",
    ],
    "lmforge.data": ["lmforge.model", "lmforge.train", "lmforge.jobs", "lmforge.checkpoint"],
    "lmforge.train": [
        "lmforge.model",
        "lmforge.jobs",
        "lmforge.checkpoint",
        "lmforge.cli",
        "lmforge.data.corpus",
        "lmforge.data.shards",
    ],
    "lmforge.checkpoint": ["lmforge.train", "lmforge.jobs", "lmforge.cli"],
    "lmforge.generate": ["lmforge.train", "lmforge.jobs", "lmforge.cli"],
    "lmforge.decoding": ["lmforge.train", "lmforge.jobs", "lmforge.cli", "lmforge.generate"],
    "lmforge.beam": ["lmforge.train", "lmforge.jobs", "lmforge.cli", "lmforge.generate"],
    "lmforge.evaluate": ["lmforge.train", "lmforge.jobs", "lmforge.cli"],
    "lmforge.training": ["lmforge.jobs", "lmforge.cli"],
    "lmforge.interop": ["lmforge.train", "lmforge.jobs", "lmforge.cli", "lmforge.generate"],
    "lmforge.files": ["lmforge."],
    "lmforge.metric_names": ["lmforge."],
    "lmforge.compress.prune": ["lmforge.jobs", "lmforge.cli", "lmforge.checkpoint"],
    "lmforge.compress.quantize": ["lmforge.jobs", "lmforge.cli", "lmforge.checkpoint"],
    "lmforge.compress.distill": ["lmforge.jobs", "lmforge.cli", "lmforge.checkpoint"],
    "lmforge.compress.runs": ["lmforge.cli"],
    "lmforge.cli": ["lmforge.model", "lmforge.train", "lmforge.data", "lmforge.checkpoint"],
    "lmforge.cli_train": ["lmforge.model", "lmforge.train", "lmforge.data", "lmforge.checkpoint"],
}
ALLOWED = {
    "lmforge.config": {"lmforge.errors", "lmforge.metric_names"},
    "lmforge.files": {"lmforge.errors"},
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("lmforge")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_point_downwards() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for prefix, banned in FORBIDDEN.items():
            if name != prefix and not name.startswith(prefix + "."):
                continue
            for imported in imports_of(path) - ALLOWED.get(prefix, set()):
                if any(imported == b.rstrip(".") or imported.startswith(b) for b in banned):
                    violations.append(f"{name} imports {imported}")
    assert not violations, violations


def test_config_does_not_import_torch() -> None:
    assert "import torch" not in (PACKAGE / "config.py").read_text(encoding="utf-8")


def test_only_cli_exits() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert "sys.exit" not in path.read_text(encoding="utf-8"), path


def test_the_ignore_index_is_defined_once_and_is_pytorchs_default() -> None:
    """One IGNORE_INDEX (data/batches.py, beside Batch) for every batch builder and loss; it
    must stay F.cross_entropy's default, which some losses rely on."""
    import inspect

    import torch.nn.functional as F

    from lmforge.data.batches import IGNORE_INDEX

    definitions = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in node.targets)
    ]
    assert definitions == ["data/batches.py"]
    default = inspect.signature(F.cross_entropy).parameters["ignore_index"].default
    assert default == IGNORE_INDEX
