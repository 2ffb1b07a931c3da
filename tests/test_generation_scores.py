"""SFT generation scores: exact match, and BLEU / chrF with hypotheses and references in their
places (both are asymmetric), from completions stubbed in place of a model."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import sacrebleu

from lmforge.data.sft import Pair
from lmforge.jobs import evaluate as evaluate_job

REFERENCES = [
    "the cat sat on the mat today",
    "a quick brown fox jumps over the lazy dog",
    "pack my box with five dozen jugs",
]
# shorter than the references (BLEU's brevity penalty) and missing words (chrF's recall)
OUTPUTS = [" the cat sat on the mat", "a quick fox jumps over the dog ", "pack my box with five"]


@dataclass
class _Cfg:
    block_size: int = 64


class _Model:
    cfg = _Cfg()


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """score_generation over a stub run whose greedy completions are OUTPUTS; records prompts."""
    calls: list[list[str]] = []

    def generate(model: object, tokenizer: object, prompts: list[str], *args, **kwargs):
        calls.append(list(prompts))
        return iter(OUTPUTS[: len(prompts)])

    monkeypatch.setattr(evaluate_job, "load_run", lambda run: (None, _Model(), _Tokenizer()))
    monkeypatch.setattr(evaluate_job, "generate", generate)
    return calls


def test_scores_compare_hypotheses_with_references(stubbed: list[list[str]]) -> None:
    pairs = [Pair(f"prompt {i}", f" {ref} ") for i, ref in enumerate(REFERENCES)]
    scores = evaluate_job.score_generation(Path("run"), pairs)
    assert stubbed == [[p.prompt for p in pairs]]
    hypotheses = [o.strip() for o in OUTPUTS]
    bleu = sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [REFERENCES]).score
    assert scores["bleu"] == pytest.approx(bleu)
    assert scores["chrf"] == pytest.approx(chrf)
    # not vacuous: both metrics change when the sides are swapped
    assert bleu != pytest.approx(sacrebleu.corpus_bleu(REFERENCES, [hypotheses]).score)
    assert chrf != pytest.approx(sacrebleu.corpus_chrf(REFERENCES, [hypotheses]).score)
    assert scores["examples"] == 3
    assert scores["exact_match"] == 0.0


def test_exact_match_compares_stripped_texts(stubbed: list[list[str]]) -> None:
    pairs = [Pair("p", " the cat sat on the mat\n"), Pair("q", "a quick dog")]
    scores = evaluate_job.score_generation(Path("run"), pairs)
    assert scores["exact_match"] == 0.5
    assert scores["samples"][0] == {"prompt": "p", "output": "the cat sat on the mat"}
