"""The mutation check's list still fits the code: a refactor that moves or rewrites a mutated
line must update scripts/mutations.toml, or `scripts/mutation_check.py` refuses to run at all."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mutation_check():
    spec = importlib.util.spec_from_file_location(
        "mutation_check", ROOT / "scripts" / "mutation_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_every_mutation_applies_exactly_once_and_names_existing_tests() -> None:
    check = _mutation_check()
    mutations = check.load_mutations(ROOT / "scripts" / "mutations.toml")
    problems = [p for m in mutations for p in check.anchor_problems(m, ROOT)]
    assert not problems, "fix scripts/mutations.toml:\n" + "\n".join(problems)


def test_a_moved_line_is_reported() -> None:
    check = _mutation_check()
    mutation = check.load_mutations(ROOT / "scripts" / "mutations.toml")[0]
    moved = check.Mutation(
        **{**mutation.__dict__, "original": mutation.original + "  # a line no file holds"}
    )
    assert any("is not in" in p for p in check.anchor_problems(moved, ROOT))
