"""docs/theory.md: every link names a function or test that exists, at the line it says, and
every formula the course needs has a section linking to its code and to its test."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "theory.md"

# The list, in course order: each must be a ### section linking code and a test.
REQUIRED_SECTIONS = (
    "Byte-level BPE",
    "WordPiece",
    "Token embeddings",
    "Sinusoidal positions",
    "Rotary positions",
    "Scaled dot-product attention",
    "Multi-head and grouped-query attention",
    "Position-wise feed-forward network",
    "LayerNorm and RMSNorm",
    "Residual connections, pre-norm and post-norm",
    "The causal language model",
    "Masked LM and next-sentence prediction",
    "Softmax cross-entropy and label smoothing",
    "Adam and AdamW",
    "Warmup and cosine decay",
    "Gradient clipping",
    "Perplexity and bits per byte",
    "Precision, recall, F1",
    "BLEU",
    "LoRA",
    "Knowledge distillation",
    "int8 absmax quantization",
)


def _links_module():
    spec = importlib.util.spec_from_file_location("theory_links", ROOT / "scripts/theory_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_link_points_at_an_existing_definition_on_its_line() -> None:
    problems, _ = _links_module().problems_and_fixed_text(DOC.read_text(encoding="utf-8"))
    assert not problems, "run `python scripts/theory_links.py` to refresh:\n" + "\n".join(problems)


def test_every_formula_has_a_section_with_code_and_test_links() -> None:
    sections = _sections(DOC.read_text(encoding="utf-8"))
    for title in REQUIRED_SECTIONS:
        body = next((b for t, b in sections.items() if t.startswith(title)), None)
        assert body is not None, f"docs/theory.md has no section {title!r}"
        assert "](../src/lmforge/" in body, f"section {title!r} links no code"
        assert "](../tests/" in body, f"section {title!r} links no test"
        assert "$" in body, f"section {title!r} states no formula"


def test_the_link_checker_catches_a_stale_line_and_a_missing_name() -> None:
    links = _links_module()
    stale = "[`lr_at`](../src/lmforge/train/optim.py#L1)"
    missing = "[`no_such_function`](../src/lmforge/train/optim.py#L1)"
    problems, fixed = links.problems_and_fixed_text(stale + " " + missing)
    assert any("lr_at is defined at line" in p for p in problems)
    assert any("defines no no_such_function" in p for p in problems)
    assert "#L1)" not in fixed.split(" ")[0]
