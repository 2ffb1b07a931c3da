"""Evaluation metrics against hand-worked examples and their formulas.

BLEU = BP · exp(Σ_{n=1..4} ¼ ln p_n), p_n = clipped n-gram matches / hypothesis n-grams (summed
over the corpus), BP = min(1, e^(1 − r/c)) for reference length r and hypothesis length c.
Per class: P = TP/(TP + FP), R = TP/(TP + FN), F1 = 2PR/(P + R); macro = mean over classes.
"""

import math
from collections import Counter

import pytest

from lmforge.evaluate import classification_metrics
from lmforge.jobs.evaluate import bleu


def ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_by_hand(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (×100) on whitespace tokens, one reference each, no smoothing."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hyp_counts, ref_counts = ngrams(h, n), ngrams(r, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += sum(hyp_counts.values())
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = min(1.0, math.exp(1 - ref_len / hyp_len))
    return 100 * brevity * math.exp(log_precision)


REFERENCE = "the quick brown fox jumps over the lazy dog"


def test_bleu_of_one_sentence_worked_by_hand() -> None:
    """p₁ = 8/9, p₂ = 6/8, p₃ = 4/7, p₄ = 2/6 ("jumped" breaks the n-grams through it), equal
    lengths so BP = 1: BLEU = 100·(8/9 · 6/8 · 4/7 · 2/6)^(1/4) = 100·(96/756)^(1/4) ≈ 59.70."""
    score, _ = bleu(["the quick brown fox jumped over the lazy dog"], [REFERENCE], "none")
    assert math.isclose(score, 100 * (96 / 756) ** 0.25, rel_tol=1e-9)


def test_the_brevity_penalty_worked_by_hand() -> None:
    """Every n-gram of a 4-word prefix matches, but c = 4 < r = 9: BLEU = 100·e^(1 − 9/4)."""
    score, _ = bleu(["the quick brown fox"], [REFERENCE], "none")
    assert math.isclose(score, 100 * math.exp(1 - 9 / 4), rel_tol=1e-9)


def test_corpus_bleu_sums_counts_over_sentences_before_dividing() -> None:
    hypotheses = [
        "a cat sat on the mat and looked at the door",
        "the dog ran in the park with a red ball",
        "it was a cold day in the old town",
    ]
    references = [
        "the cat sat on the mat and looked at the window",
        "a dog ran in the park with the red ball",
        "it was a very cold day in the old town",
    ]
    score, _ = bleu(hypotheses, references, "none")
    assert math.isclose(score, bleu_by_hand(hypotheses, references), rel_tol=1e-9)
    mean_of_sentences = sum(
        bleu_by_hand([h], [r]) for h, r in zip(hypotheses, references, strict=True)
    ) / len(hypotheses)
    assert not math.isclose(score, mean_of_sentences, rel_tol=1e-3)


def test_precision_recall_f1_worked_by_hand() -> None:
    """labels 0 0 1 1 2, predictions 0 1 1 1 0:
    class 0: TP 1, FP 1, FN 1 -> P = R = F1 = 1/2; class 1: TP 2, FP 1, FN 0 -> P = 2/3, R = 1,
    F1 = 0.8; class 2: TP 0 -> 0, 0, 0. Macro F1 = (0.5 + 0.8 + 0)/3, accuracy 3/5."""
    m = classification_metrics([0, 1, 1, 1, 0], [0, 0, 1, 1, 2], n_classes=3)
    assert m["precision"] == pytest.approx([0.5, 2 / 3, 0.0])
    assert m["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["f1"] == pytest.approx([0.5, 0.8, 0.0])
    assert m["macro_f1"] == pytest.approx(1.3 / 3)
    assert m["accuracy"] == pytest.approx(0.6)
