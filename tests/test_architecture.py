"""The layers of docs/architecture.md, checked on the code's own imports (AST, function-level
imports included): each module imports only from its layer and the layers below, and no two
modules import each other, directly or around a loop."""

import ast
import inspect
import subprocess
import sys
from functools import cache
from pathlib import Path

import torch.nn.functional as F

import lmforge
from lmforge.train import objectives

PACKAGE = Path(lmforge.__file__).parent

# Lowest first. A module belongs to the layer of its longest matching prefix (relative to
# lmforge); "" is the package's own __init__ (lazy re-exports) and __main__, the entry points.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("config",),
    ("rundir.files", "rundir.layout", "tokenizer", "plots"),
    ("data",),
    ("model",),
    ("generation", "evaluate"),
    ("train", "compress"),
    ("rundir",),
    ("interop",),
    ("jobs",),
    ("cli",),
    ("", "__main__"),
]
# Narrower rules inside the order (../shared/DESIGN.md, Boundaries): prefix -> what it may import.
ONLY = {
    "model": ("errors", "config", "model"),
    "train": (
        "errors",
        "config",
        "rundir.files",
        "rundir.layout",
        "plots",
        "data.batches",
        "evaluate",
        "train",
    ),
    "cli": ("errors", "config", "jobs", "cli"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".") or (prefix == "" and name == "")


def layer_of(name: str) -> int:
    best, level = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _matches(name, prefix) and len(prefix) > best:
                best, level = len(prefix), index
    assert level >= 0, f"lmforge.{name} belongs to no layer; add it to LAYERS"
    return level


def imports_of(name: str) -> set[str]:
    """The lmforge modules (relative names) that module `name` imports, anywhere in it."""
    tree = ast.parse(_modules()[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lmforge.rundir import layout` imports the module lmforge.rundir.layout
            targets = [f"{node.module}.{a.name}" for a in node.names]
            targets = [
                t if t.removeprefix("lmforge.") in _modules() else node.module for t in targets
            ]
        else:
            continue
        for target in targets:
            if target == "lmforge" or target.startswith("lmforge."):
                found.add(target.removeprefix("lmforge").removeprefix("."))
    return found - {name}


def test_every_module_imports_only_from_its_layer_and_below() -> None:
    upward = [
        f"lmforge.{name} ({layer_of(name)}) imports lmforge.{target} ({layer_of(target)})"
        for name in _modules()
        for target in imports_of(name)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_the_narrow_boundaries_hold() -> None:
    """model/ knows nothing of data or training; train/ sees data only as Batch; cli/ calls jobs."""
    breaks = [
        f"lmforge.{name} imports lmforge.{target}"
        for name in _modules()
        for prefix, allowed in ONLY.items()
        if _matches(name, prefix)
        for target in imports_of(name)
        if not any(_matches(target, a) for a in allowed)
    ]
    assert not breaks, "\n".join(breaks)


def _cycle() -> list[str] | None:
    """One import cycle among lmforge's modules, or None (depth-first search, three colours)."""
    graph = {name: sorted(imports_of(name) & set(_modules())) for name in _modules()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        state[node] = 2
        stack.pop()
        return None

    for name in sorted(graph):
        if name not in state and (loop := visit(name)):
            return loop
    return None


def test_no_import_cycles() -> None:
    loop = _cycle()
    assert loop is None, " -> ".join(f"lmforge.{n}" for n in loop or [])


def test_the_checker_sees_upward_imports_and_cycles() -> None:
    """The rules above are not vacuous: the layers order what they should, and a function-level
    import is found like a top-level one."""
    assert layer_of("rundir.layout") < layer_of("data.classify") < layer_of("model.gpt")
    assert layer_of("train.trainer") < layer_of("rundir.checkpoint") < layer_of("jobs.session")
    assert layer_of("cli.main") < layer_of("")
    assert "jobs.evaluate" in imports_of("cli.evaluate")  # imported inside run_evaluate


def _imports_in_a_fresh_python(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_lmforge_config_imports_no_torch() -> None:
    modules = _imports_in_a_fresh_python("import lmforge.config")
    assert "lmforge.config" in modules
    assert "torch" not in modules


def test_the_cli_parser_imports_no_torch_matplotlib_or_sacrebleu() -> None:
    """`lmforge --help` only builds the parser: jobs (and torch) load when a verb runs."""
    modules = _imports_in_a_fresh_python(
        "from lmforge.cli.main import build_parser; build_parser()"
    )
    assert "lmforge.cli.finetune" in modules
    assert not {"torch", "matplotlib", "sacrebleu", "lmforge.jobs.session"} & modules


def test_lazy_public_names_resolve() -> None:
    assert lmforge.GPT.__name__ == "GPT"
    assert callable(lmforge.generate)
    assert lmforge.generate.__module__ == "lmforge.generation.loop"
    assert set(lmforge.__all__) <= set(dir(lmforge))


def test_only_cli_exits() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert "sys.exit" not in path.read_text(encoding="utf-8"), path


def _assignments(name: str) -> list[str]:
    """Where a module-level name is assigned, as package-relative paths."""
    return [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == name
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]


def test_the_ignore_index_is_defined_once_and_is_pytorchs_default() -> None:
    """One IGNORE_INDEX (data/batches.py, beside Batch) for every batch builder and loss; it
    must stay F.cross_entropy's default, which some losses rely on."""
    from lmforge.data.batches import IGNORE_INDEX

    assert _assignments("IGNORE_INDEX") == ["data/batches.py"]
    default = inspect.signature(F.cross_entropy).parameters["ignore_index"].default
    assert default == IGNORE_INDEX


def test_every_run_directory_name_is_spelled_once() -> None:
    """rundir/layout.py names every file of a run directory; no module spells one again."""
    from lmforge.rundir import layout

    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    assert {"config.json", "model.safetensors", "labels.json", "tasks.json"} <= names
    spelled = [
        f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno} {node.value!r}"
        for path in PACKAGE.rglob("*.py")
        # hf_layout.py names Hugging Face's and PEFT's files: their formats, some names alike
        if path.name not in ("layout.py", "hf_layout.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in names - {"best", "optimizer"}
    ]
    assert not spelled, spelled


def test_every_loss_is_defined_in_objectives() -> None:
    """A loss is a public function in train/objectives.py, nowhere else (private helpers that
    pick or average one, and plots of one, are not losses)."""
    elsewhere = [
        f"{path.relative_to(PACKAGE).as_posix()}: {node.name}"
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).as_posix() != "train/objectives.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
        and node.name.endswith(("_loss", "_objective"))
        and not node.name.startswith(("_", "plot_"))
    ]
    defined = {name for name, _ in inspect.getmembers(objectives, inspect.isfunction)}
    assert {"clm_loss", "sft_loss", "multitask_loss", "distillation_loss"} <= defined
    assert not elsewhere, elsewhere
