"""Near-duplicate removal: shingles, MinHash estimates, LSH banding and streaming removal, on a
synthetic corpus with planted near-duplicates, and cross-checked against datasketch."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from lmforge.data.near_dedup import (
    EMPTY_SLOT,
    RECALL_WEIGHTS,
    MinHasher,
    NearDuplicateIndex,
    candidate_probability,
    choose_unit,
    estimated_jaccard,
    lsh_parameters,
    remove_near_duplicates,
    shingles,
)

NUM_PERM = 128
SEED = 1
DOC_WORDS = 100
ORIGINALS, NEAR_COPIES, HALF_COPIES = 300, 100, 50


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def _pair_with_jaccard(rng: np.random.Generator, jaccard: float, union: int) -> tuple[set, set]:
    """Two sets of strings whose union has `union` elements, `jaccard` of them shared."""
    ids = rng.permutation(10 * union)[:union]
    elements = [f"item-{i}" for i in ids]
    shared = round(jaccard * union)
    only_a = (union - shared) // 2
    a = set(elements[: shared + only_a])
    b = set(elements[:shared]) | set(elements[shared + only_a :])
    return a, b


def _datasketch_minhash(shingle_set: set[str]) -> MinHash:
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED)
    minhash.update_batch([s.encode("utf-8") for s in shingle_set])
    return minhash


# ---------------------------------------------------------------- the planted corpus


@dataclass
class PlantedCorpus:
    """A stream of texts: originals, then near-copies and half-copies placed after their source."""

    texts: list[str]
    kinds: list[str]  # "original", "near" (a planted near-duplicate) or "half" (J ≈ 0.5)
    sources: list[int | None]  # for a copy: the stream position of the original it came from


def _vocabulary(rng: np.random.Generator, size: int = 4000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(letters, size=rng.integers(3, 10)))] = None
    return list(words)


def _render(words: list[str], rng: np.random.Generator, cosmetic: float = 0.0) -> str:
    """Words as text; `cosmetic` of them capitalised or followed by punctuation, with odd
    whitespace between some words: changes that normalisation removes."""
    out = []
    for word in words:
        if rng.random() < cosmetic:
            word = word.capitalize() + str(rng.choice(["", ",", ";", "."]))
        out.append(word)
    spaces = rng.choice([" ", " ", " ", "  ", "\n"], size=len(out))
    return "".join(w + s for w, s in zip(out, spaces, strict=True)).strip()


def _near_copy(words: list[str], vocabulary: list[str], rng: np.random.Generator) -> list[str]:
    """One word substituted in the middle; one or two words cut from or added to the end."""
    copy = list(words)
    copy[rng.integers(5, len(copy) - 5)] = str(rng.choice(vocabulary))
    edit = int(rng.integers(1, 3))
    if rng.random() < 0.5:
        return copy[:-edit]
    return copy + [str(w) for w in rng.choice(vocabulary, size=edit)]


def _half_copy(words: list[str], vocabulary: list[str], rng: np.random.Generator) -> list[str]:
    """The first two thirds of the words, then new ones: shingle Jaccard ≈ 0.5."""
    keep = 2 * len(words) // 3
    return words[:keep] + [str(w) for w in rng.choice(vocabulary, size=len(words) - keep)]


@pytest.fixture(scope="module")
def corpus() -> PlantedCorpus:
    rng = np.random.default_rng(17)
    vocabulary = _vocabulary(rng)
    originals = [[str(w) for w in rng.choice(vocabulary, size=DOC_WORDS)] for _ in range(ORIGINALS)]
    # (sort key, words, kind, original number): a copy sorts somewhere after its original.
    entries = [(float(i), words, "original", i) for i, words in enumerate(originals)]
    for i in range(NEAR_COPIES + HALF_COPIES):
        kind = "near" if i < NEAR_COPIES else "half"
        make = _near_copy if kind == "near" else _half_copy
        position = float(rng.uniform(i + 0.5, ORIGINALS))
        entries.append((position, make(originals[i], vocabulary, rng), kind, i))
    entries.sort(key=lambda e: e[0])
    stream_position = {e[3]: p for p, e in enumerate(entries) if e[2] == "original"}
    texts = [
        _render(words, rng, cosmetic=0.05 if kind == "near" else 0.0)
        for _, words, kind, _ in entries
    ]
    kinds = [kind for _, _, kind, _ in entries]
    sources = [None if kind == "original" else stream_position[i] for _, _, kind, i in entries]
    return PlantedCorpus(texts, kinds, sources)


def test_planted_pairs_have_the_intended_true_jaccard(corpus: PlantedCorpus) -> None:
    """Near-copies lie well above 0.8 and half-copies well below: a fair test of the threshold."""
    near, half = [], []
    for text, kind, source in zip(corpus.texts, corpus.kinds, corpus.sources, strict=True):
        if source is not None:
            j = _jaccard(shingles(text), shingles(corpus.texts[source]))
            (near if kind == "near" else half).append(j)
    assert len(near) == NEAR_COPIES
    assert len(half) == HALF_COPIES
    assert min(near) >= 0.85
    assert min(half) >= 0.4
    assert max(half) <= 0.6


def test_recall_and_precision_at_threshold_08(corpus: PlantedCorpus) -> None:
    index = NearDuplicateIndex(threshold=0.8, num_perm=NUM_PERM, seed=SEED)
    flagged = [index.is_duplicate(text) for text in corpus.texts]
    planted = [kind == "near" for kind in corpus.kinds]
    true_positives = sum(f and p for f, p in zip(flagged, planted, strict=True))
    recall = true_positives / sum(planted)
    precision = true_positives / sum(flagged)
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision
    half_flagged = [f for f, kind in zip(flagged, corpus.kinds, strict=True) if kind == "half"]
    assert not any(half_flagged)  # J ≈ 0.5 is a different document, not a near-duplicate


def test_remove_near_duplicates_keeps_first_occurrences_in_order(corpus: PlantedCorpus) -> None:
    kept, report = remove_near_duplicates(corpus.texts, threshold=0.8, max_examples=3)
    kept = list(kept)
    assert report.kept == len(kept)
    assert report.kept + report.removed == len(corpus.texts)
    originals = [
        t for t, kind in zip(corpus.texts, corpus.kinds, strict=True) if kind == "original"
    ]
    assert [t for t in kept if t in set(originals)] == originals  # every original, in order
    assert len(report.examples) == 3
    for example in report.examples:
        assert corpus.kinds[example.position] == "near"
        assert example.kept_position == corpus.sources[example.position]
        assert example.similarity >= 0.8
        assert corpus.texts[example.position].startswith(example.excerpt)
    assert "near-duplicates removed" in report.summary()


def test_first_occurrence_wins_and_order_is_kept() -> None:
    a = " ".join(f"alpha{i}" for i in range(40))
    b = " ".join(f"beta{i}" for i in range(40))
    c = " ".join(f"gamma{i}" for i in range(40))
    a_again = a.upper().replace("ALPHA39", "omega")  # case is normalised; one word changed
    texts = [a, b, a_again, c, b, ""]
    kept, report = remove_near_duplicates(texts)
    assert list(kept) == [a, b, c, ""]  # an empty text is never a near-duplicate
    assert (report.kept, report.removed) == (4, 2)
    assert [(e.position, e.kept_position) for e in report.examples] == [(2, 0), (4, 1)]
    assert report.examples[1].similarity == 1.0


# ---------------------------------------------------------------- MinHash


@pytest.mark.parametrize("jaccard", [0.1, 0.2, 0.5, 0.8, 0.95])
def test_fraction_of_equal_slots_estimates_jaccard(jaccard: float) -> None:
    """P[min h(A) = min h(B)] = J(A, B): over 512 hash functions the fraction is within 0.05."""
    a, b = _pair_with_jaccard(np.random.default_rng(3), jaccard, union=1000)
    assert _jaccard(a, b) == pytest.approx(jaccard, abs=1e-3)
    hasher = MinHasher(num_perm=512, seed=SEED)
    assert estimated_jaccard(hasher.signature(a), hasher.signature(b)) == pytest.approx(
        jaccard, abs=0.05
    )


def test_estimates_agree_with_datasketch() -> None:
    """Over many pairs both our estimate and datasketch's are close to the true Jaccard."""
    rng = np.random.default_rng(5)
    hasher = MinHasher(NUM_PERM, SEED)
    truth, ours, theirs = [], [], []
    for jaccard in np.linspace(0.0, 1.0, 101):
        a, b = _pair_with_jaccard(rng, float(jaccard), union=int(rng.integers(50, 400)))
        truth.append(_jaccard(a, b))
        ours.append(estimated_jaccard(hasher.signature(a), hasher.signature(b)))
        theirs.append(_datasketch_minhash(a).jaccard(_datasketch_minhash(b)))
    truth_, ours_, theirs_ = np.array(truth), np.array(ours), np.array(theirs)
    assert np.abs(ours_ - truth_).mean() < 0.05
    assert np.abs(theirs_ - truth_).mean() < 0.05
    assert np.abs(ours_ - theirs_).mean() < 0.06
    assert abs((ours_ - truth_).mean()) < 0.01  # unbiased


def test_signature_is_mergeable_and_long_documents_are_chunked() -> None:
    """min over A ∪ B = min(min over A, min over B); 6000 shingles cross the chunk boundary."""
    hasher = MinHasher(NUM_PERM, SEED)
    a = {f"a{i}" for i in range(6000)}
    b = {f"b{i}" for i in range(300)}
    merged = np.minimum(hasher.signature(a), hasher.signature(b))
    np.testing.assert_array_equal(hasher.signature(a | b), merged)
    assert hasher.signature(a).dtype == np.uint32
    assert (hasher.signature(set()) == EMPTY_SLOT).all()


def test_signatures_are_the_same_in_another_process() -> None:
    """The shingle hash is BLAKE2b, not Python's per-process salted hash()."""
    text = "The same words give the same signature in every process, whatever the hash seed."
    program = (
        "from lmforge.data.near_dedup import MinHasher, shingles; "
        f"print(MinHasher({NUM_PERM}, {SEED}).signature(shingles({text!r})).tolist())"
    )
    here = MinHasher(NUM_PERM, SEED).signature(shingles(text)).tolist()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(result.stdout) == here


def test_estimated_jaccard_rejects_mismatched_signatures() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        estimated_jaccard(np.zeros(4, np.uint32), np.zeros(8, np.uint32))


# ---------------------------------------------------------------- LSH banding


@pytest.mark.parametrize("weights", [(0.5, 0.5), RECALL_WEIGHTS])
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_parameters_match_datasketch(threshold: float, weights: tuple[float, float]) -> None:
    """Our midpoint-rule optimum of the false positive/negative areas equals datasketch's."""
    theirs = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=weights)
    assert lsh_parameters(threshold, NUM_PERM, *weights) == (theirs.b, theirs.r)


def test_default_lsh_parameters_for_08() -> None:
    index = NearDuplicateIndex(threshold=0.8, num_perm=NUM_PERM)
    assert (index.bands, index.rows) == (14, 9)
    assert candidate_probability(0.9, 14, 9) > 0.99
    assert candidate_probability(0.5, 14, 9) < 0.03


def test_candidate_rate_follows_the_s_curve() -> None:
    """Pairs at J = 0.8 become candidates at the rate 1 − (1 − s^r)^b predicts."""
    rng = np.random.default_rng(11)
    index = NearDuplicateIndex(threshold=0.8, num_perm=NUM_PERM, seed=SEED)
    hasher = index.hasher
    hits = 0
    for key in range(300):
        a, b = _pair_with_jaccard(rng, 0.8, union=200)
        index.add(key, hasher.signature(a))
        hits += key in index.query(hasher.signature(b))
    expected = float(candidate_probability(0.8, index.bands, index.rows))
    assert hits / 300 == pytest.approx(expected, abs=0.08)


def test_lsh_candidates_agree_with_datasketch(corpus: PlantedCorpus) -> None:
    """Index the originals in both; the same (copy, source) and (original, original) pairs
    become candidates in ours and in datasketch.MinHashLSH, for almost all pairs."""
    ours = NearDuplicateIndex(threshold=0.8, num_perm=NUM_PERM, seed=SEED)
    theirs = MinHashLSH(threshold=0.8, num_perm=NUM_PERM, weights=RECALL_WEIGHTS)
    assert (theirs.b, theirs.r) == (ours.bands, ours.rows)
    shingle_sets = [shingles(text) for text in corpus.texts]
    originals = [p for p, kind in enumerate(corpus.kinds) if kind == "original"]
    for p in originals:
        ours.add(p, ours.hasher.signature(shingle_sets[p]))
        theirs.insert(p, _datasketch_minhash(shingle_sets[p]))
    rng = np.random.default_rng(23)
    pairs = [(p, s) for p, s in enumerate(corpus.sources) if s is not None]
    pairs += [tuple(int(p) for p in rng.choice(originals, 2, replace=False)) for _ in range(300)]
    agree = 0
    for probe, target in pairs:
        ours_says = target in ours.query(ours.hasher.signature(shingle_sets[probe]))
        theirs_says = target in theirs.query(_datasketch_minhash(shingle_sets[probe]))
        agree += ours_says == theirs_says
    assert agree / len(pairs) >= 0.95


def test_index_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="both bands and rows"):
        NearDuplicateIndex(bands=4)
    with pytest.raises(ValueError, match="bands·rows"):
        NearDuplicateIndex(num_perm=16, bands=4, rows=5)
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=0.0)
    index = NearDuplicateIndex(num_perm=16, bands=4, rows=4)
    signature = index.signature("one two three four five six")
    index.add("doc", signature)
    assert "doc" in index
    assert len(index) == 1
    with pytest.raises(ValueError, match="already in the index"):
        index.add("doc", signature)
    with pytest.raises(ValueError, match="16 slots"):
        index.query(signature[:8])


# ---------------------------------------------------------------- shingles and scripts


def _chinese_text(rng: np.random.Generator, length: int = 200) -> str:
    """Random CJK ideographs with a comma every 20 characters: shingles as Chinese text would."""
    chars = [chr(c) for c in rng.integers(0x4E00, 0x9FA6, size=length)]
    return "".join(c + ("，" if i % 20 == 19 else "") for i, c in enumerate(chars)) + "。"


def test_script_choice_chinese_by_characters_english_by_words() -> None:
    chinese = _chinese_text(np.random.default_rng(0))
    english = "The quick brown fox jumps over the lazy dog while the cat sleeps."
    assert choose_unit(chinese) == "char"
    assert choose_unit(english) == "word"
    assert all(len(s) == 3 and " " not in s for s in shingles(chinese))
    assert all(s.count(" ") == 4 for s in shingles(english))
    assert "quick brown fox jumps over" in shingles(english)
    assert choose_unit("今日はいい天気ですね") == "char"  # Japanese: Han and Hiragana
    assert choose_unit("안녕하세요 반갑습니다") == "char"  # Korean: Hangul
    assert choose_unit("We met in 北京 last spring and it rained") == "word"  # mostly Latin
    assert shingles("abc def", unit="char", n=2) == {"ab", "bc", "cd", "de", "ef"}


def test_chinese_near_duplicate_found_unrelated_text_not() -> None:
    rng = np.random.default_rng(7)
    original = _chinese_text(rng)
    chars = list(original)
    for position in rng.choice([i for i, c in enumerate(chars) if c not in "，。"], 3, False):
        chars[position] = "变"  # three characters changed
    near = "".join(chars)
    unrelated = _chinese_text(rng)
    assert _jaccard(shingles(original), shingles(near)) > 0.85
    index = NearDuplicateIndex(threshold=0.8)
    assert not index.is_duplicate(original)
    assert index.is_duplicate(near)
    assert not index.is_duplicate(unrelated)


def test_normalisation_of_case_width_punctuation_and_whitespace() -> None:
    assert shingles("Hello,   WORLD!\n\tthis is ＦＵＬＬ width") == shingles(
        "hello world this is full width"
    )
    assert shingles("你好，世界！今天", unit="char") == shingles("你好 世界 今天", unit="char")


def test_short_and_empty_texts() -> None:
    assert shingles("Hello world") == {"hello world"}  # fewer words than n: the whole text
    assert shingles("你好") == {"你好"}
    assert shingles("") == set()
    assert shingles(" ... !! ") == set()
    index = NearDuplicateIndex()
    assert not index.is_duplicate("")  # nothing to compare: never a duplicate, not indexed
    assert not index.is_duplicate("")
    assert len(index) == 0
    assert not index.is_duplicate("Hello world")
    assert index.is_duplicate("hello,  World!")
    assert not index.is_duplicate("Hello there")
    assert len(index) == 2


def test_shingles_validate_arguments() -> None:
    with pytest.raises(ValueError, match="unit"):
        shingles("text", unit="sentence")
    with pytest.raises(ValueError, match="at least 1"):
        shingles("text", n=0)
