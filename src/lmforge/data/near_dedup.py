"""Near-duplicate removal with MinHash and locality-sensitive hashing (LSH).

Exact deduplication (corpus.py) drops byte-identical documents; web corpora are also full of
*near* duplicates: the same article with another header, a fixed typo, a changed date. This
module finds them in one streaming pass, keeping the first occurrence of each.

1. Shingles. A document becomes a set of overlapping n-grams: word 5-grams for scripts that put
   spaces between words, character 3-grams for text that is mostly Chinese, Japanese or Korean
   (Han, Hiragana, Katakana, Hangul), where words are not separated by spaces. Case, Unicode
   compatibility forms (NFKC), punctuation and whitespace are normalised away first.
   The shingle size sets how strict "near" is: one substituted word changes up to n word
   n-grams, so replacing a fraction q of the words scattered through a text keeps about
   (1 − q)^n of its shingles; with n = 5, q = 5% already lowers J to about 0.63.

2. Jaccard similarity. Two documents are compared as shingle sets A and B:

       J(A, B) = |A ∩ B| / |A ∪ B|

   J is 1 for identical sets and 0 for disjoint ones. Comparing every pair of documents exactly
   costs O(N²) set operations, far too many for a corpus.

3. MinHash. Take a hash function h that orders all possible shingles at random. The shingle of
   A ∪ B with the smallest hash is equally likely to be any element of A ∪ B, and min h(A) equals
   min h(B) exactly when that element lies in A ∩ B, so

       P[min h(A) = min h(B)] = |A ∩ B| / |A ∪ B| = J(A, B).

   With k independent hash functions h_1 … h_k, the *signature* of A is the vector
   (min h_1(A), …, min h_k(A)), and the fraction of equal slots in two signatures is an
   unbiased estimate of J with standard deviation √(J(1 − J)/k): about 0.035 at J = 0.8 with
   k = 128. A document of any length is summarised by k small integers.

   The k hash functions come from a universal family: each shingle is first hashed to a stable
   64-bit integer x (BLAKE2b; Python's own hash() is salted per process and would make
   signatures irreproducible), then h_i(x) = (a_i·x + b_i) mod p with random 1 ≤ a_i < p,
   0 ≤ b_i < p and the prime p = 2³² − 5. Because x is reduced mod p first, a_i·x + b_i < 2⁶⁴,
   so the arithmetic is exact in numpy's uint64 and the signature fits in uint32. Such a linear
   hash is not a perfectly random ordering, but it is close enough that the estimates match the
   formula above (the tests compare them with the true J and with the datasketch library).

4. LSH banding. Comparing signatures is cheaper than comparing sets, but still O(N²). Split the
   k slots into b bands of r rows (b·r ≤ k) and put each document into one bucket per band,
   keyed by that band's r values. Documents sharing any bucket become *candidates*. For a pair
   with similarity s, one band matches with probability s^r, so

       P[candidate] = 1 − (1 − s^r)^b,

   an S-shaped curve that rises steeply around s ≈ (1/b)^(1/r). Candidates are then verified by
   their estimated Jaccard ≥ threshold, so a query only looks at a handful of documents.

   Choosing b and r for a threshold t: pairs below t that become candidates are false positives
   (wasted verifications), pairs above t that do not are false negatives (missed duplicates).
   `lsh_parameters` picks the (b, r) with b·r ≤ k that minimises the weighted areas

       FP(b, r) = ∫₀ᵗ P[candidate](s) ds,    FN(b, r) = ∫ₜ¹ (1 − P[candidate](s)) ds.

   The classic rule of thumb, (1/b)^(1/r) ≈ t, puts the steepest point of the curve at t; with
   equal weights the areas pick a similar curve (for t = 0.8, k = 128: b = 9, r = 13, midpoint
   0.84), which still misses many true pairs: P[candidate] is only 0.40 at s = 0.8 and 0.69 at
   s = 0.85. Here every candidate is verified by its estimated Jaccard, so a false positive
   costs one cheap signature comparison while a false negative is a duplicate left in the
   corpus. `NearDuplicateIndex` therefore weighs false negatives 9:1 (weights 0.1 and 0.9),
   which for t = 0.8 and k = 128 chooses b = 14 bands of r = 9 rows (midpoint
   (1/14)^(1/9) ≈ 0.75): P[candidate] ≈ 0.87 at s = 0.8, 0.975 at 0.85, 0.999 at 0.9, and
   0.03 at 0.5. Near the threshold, recall is then limited by the estimate's own noise,
   not by LSH.
"""

import functools
import hashlib
import re
import unicodedata
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

DEFAULT_WORD_N = 5  # word 5-grams: long enough that unrelated documents share almost none
DEFAULT_CHAR_N = 3  # character 3-grams for CJK: one or two words, robust to a changed character
PRIME = (1 << 32) - 5  # 4294967291, the largest prime below 2³²: a·x + b < 2⁶⁴ never overflows
EMPTY_SLOT = np.uint32(0xFFFFFFFF)  # an empty set's minimum: above every hash value (< PRIME)
_CHUNK = 4096  # shingles hashed at once: bounds the (num_perm × chunk) matrix of a long document
_GRID = 1000  # points per interval in the numerical integrals of `lsh_parameters`
# (false positive, false negative) weights of the index: verification removes false positives,
# nothing recovers a missed duplicate (module docstring, step 4).
RECALL_WEIGHTS = (0.1, 0.9)

# Scripts written without spaces between words (plus Hangul, which is spaced but whose words are
# long syllable clusters): text mostly in these is shingled by characters.
_CJK = re.compile(
    "["
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3130-\u318f"  # Hangul Compatibility Jamo
    "\u31f0-\u31ff"  # Katakana Phonetic Extensions
    "\u3400-\u4dbf"  # CJK Unified Ideographs Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul Syllables
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\U00020000-\U0003ffff"  # Supplementary and Tertiary Ideographic Planes
    "]"
)


# ---------------------------------------------------------------- shingles


@functools.cache
def _separator_tables() -> tuple[dict[int, str], dict[int, None]]:
    """Translation tables: punctuation (Unicode category P*) to a space, and whitespace and
    punctuation to nothing. Built once, on first use, from the Basic Multilingual Plane."""
    separators = [
        c for c in map(chr, range(0x10000)) if unicodedata.category(c)[0] == "P" or c.isspace()
    ]
    to_space = {ord(c): " " for c in separators}
    to_nothing = dict.fromkeys(map(ord, separators))
    return to_space, to_nothing


def normalise(text: str) -> str:
    """NFKC-normalise (full-width forms to their plain letters) and case-fold."""
    return unicodedata.normalize("NFKC", text).casefold()


def choose_unit(text: str) -> str:
    """'char' if most letters of the text are CJK (Han, Hiragana, Katakana, Hangul), else 'word'."""
    letters = sum(c.isalpha() for c in text)
    return "char" if letters and 2 * len(_CJK.findall(text)) >= letters else "word"


def shingles(text: str, n: int | None = None, unit: str = "auto") -> set[str]:
    """The set of n-grams of a text, after normalising case, width, punctuation and whitespace.

    unit='word': n-grams of words (default n = 5), each joined by single spaces.
    unit='char': n-grams of characters (default n = 3), whitespace and punctuation removed.
    unit='auto': 'char' for text that is mostly CJK, else 'word' (see `choose_unit`).

    A text with fewer than n units gives one shingle, the whole text, so short texts are still
    compared (and equal ones still match); a text with no letters or digits gives the empty set.
    """
    if unit not in ("auto", "word", "char"):
        raise ValueError(f"unit must be 'auto', 'word' or 'char', not {unit!r}")
    if n is not None and n < 1:
        raise ValueError(f"shingle size n must be at least 1, not {n}")
    text = normalise(text)
    if unit == "auto":
        unit = choose_unit(text)
    to_space, to_nothing = _separator_tables()
    if unit == "word":
        units: list[str] = text.translate(to_space).split()
        n, joiner = n or DEFAULT_WORD_N, " "
    else:
        units = list(text.translate(to_nothing))
        n, joiner = n or DEFAULT_CHAR_N, ""
    if len(units) < n:
        return {joiner.join(units)} if units else set()
    return {joiner.join(units[i : i + n]) for i in range(len(units) - n + 1)}


# ---------------------------------------------------------------- MinHash


def stable_hash(shingle: str) -> int:
    """A 64-bit hash of a string that is the same in every process (BLAKE2b, 8-byte digest)."""
    return int.from_bytes(
        hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little"
    )


class MinHasher:
    """MinHash signatures: num_perm hash functions h_i(x) = (a_i·x + b_i) mod PRIME, seeded."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm must be at least 1, not {num_perm}")
        self.num_perm = num_perm
        self.seed = seed
        rng = np.random.default_rng(seed)
        # Column vectors, so that a·x + b broadcasts to a (num_perm, shingles) matrix.
        self._a = rng.integers(1, PRIME, size=(num_perm, 1), dtype=np.uint64)
        self._b = rng.integers(0, PRIME, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, shingle_set: Iterable[str]) -> np.ndarray:
        """The uint32 vector (min_x h_1(x), …, min_x h_num_perm(x)) over the set's shingles.

        An empty set gives EMPTY_SLOT in every slot.
        """
        x = np.fromiter((stable_hash(s) for s in shingle_set), dtype=np.uint64)
        x %= np.uint64(PRIME)  # now x < PRIME < 2³², so a·x + b < 2⁶⁴ below
        minimum = np.full(self.num_perm, EMPTY_SLOT, dtype=np.uint64)
        for start in range(0, len(x), _CHUNK):
            values = (self._a * x[start : start + _CHUNK] + self._b) % np.uint64(PRIME)
            np.minimum(minimum, values.min(axis=1), out=minimum)
        return minimum.astype(np.uint32)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of slots in which two MinHash signatures agree: an estimate of J(A, B)."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length: {sig_a.shape} and {sig_b.shape}")
    return float(np.count_nonzero(sig_a == sig_b)) / len(sig_a)


# ---------------------------------------------------------------- LSH banding


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> np.ndarray:
    """P[a pair of this Jaccard similarity shares a bucket] = 1 − (1 − s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """(1/bands)^(1/rows): roughly where the candidate curve is steepest (P ≈ 1 − 1/e ≈ 0.63)."""
    return (1.0 / bands) ** (1.0 / rows)


def _midpoints(low: float, high: float) -> tuple[np.ndarray, float]:
    """Midpoint-rule nodes on [low, high] and the width each stands for."""
    width = (high - low) / _GRID
    return low + width * (np.arange(_GRID) + 0.5), width


def lsh_parameters(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """The (bands, rows), bands·rows ≤ num_perm, minimising the weighted false positive and
    false negative areas under and over the candidate curve (see the module docstring)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, not {threshold}")
    below, below_width = _midpoints(0.0, threshold)
    above, above_width = _midpoints(threshold, 1.0)
    best, best_error = (1, 1), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = candidate_probability(below, bands, rows).sum() * below_width
            false_negative = (1.0 - candidate_probability(above, bands, rows)).sum() * above_width
            error = false_positive_weight * false_positive + false_negative_weight * false_negative
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


class NearDuplicateIndex:
    """An LSH index of MinHash signatures that answers "is this text a near-duplicate of one
    already seen?", i.e. estimated Jaccard ≥ threshold with an indexed text.

    bands and rows default to `lsh_parameters(threshold, num_perm, *weights)`; texts are
    shingled by `shingles(text, n, unit)`.

    Streaming use: `is_duplicate(text)` for each text in order; it indexes the texts that are
    new, so the first occurrence of each group of near-duplicates is the one kept.

    Memory: one signature (4·num_perm bytes) plus one bucket entry per band for each indexed text.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        seed: int = 1,
        *,
        n: int | None = None,
        unit: str = "auto",
        bands: int | None = None,
        rows: int | None = None,
        weights: tuple[float, float] = RECALL_WEIGHTS,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], not {threshold}")
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither (then they are optimised)")
        if bands is None or rows is None:
            bands, rows = lsh_parameters(min(threshold, 0.99), num_perm, *weights)
        if bands < 1 or rows < 1 or bands * rows > num_perm:
            raise ValueError(f"need 1 ≤ bands·rows ≤ num_perm; got {bands}·{rows} > {num_perm}")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, seed)
        self.n, self.unit = n, unit
        self.bands, self.rows = bands, rows
        self._buckets: list[dict[bytes, list[Hashable]]] = [{} for _ in range(bands)]
        self._signatures: dict[Hashable, np.ndarray] = {}
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._signatures)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._signatures

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of a text's shingles, with this index's shingle settings."""
        return self.hasher.signature(shingles(text, self.n, self.unit))

    def _band_keys(self, signature: np.ndarray) -> Iterator[bytes]:
        """One bucket key per band: the bytes of that band's `rows` slots."""
        if signature.shape != (self.hasher.num_perm,):
            raise ValueError(f"expected a signature of {self.hasher.num_perm} slots")
        for band in range(self.bands):
            yield signature[band * self.rows : (band + 1) * self.rows].tobytes()

    def add(self, key: Hashable, signature: np.ndarray) -> None:
        """Index a signature under a new key."""
        if key in self._signatures:
            raise ValueError(f"key {key!r} is already in the index")
        for buckets, band_key in zip(self._buckets, self._band_keys(signature), strict=True):
            buckets.setdefault(band_key, []).append(key)
        self._signatures[key] = signature

    def query(self, signature: np.ndarray) -> list[Hashable]:
        """Candidate keys, unverified: those sharing at least one band bucket, in index order."""
        found: dict[Hashable, None] = {}
        for buckets, band_key in zip(self._buckets, self._band_keys(signature), strict=True):
            found.update(dict.fromkeys(buckets.get(band_key, ())))
        return list(found)

    def best_match(self, signature: np.ndarray) -> tuple[Hashable, float] | None:
        """The candidate with the highest estimated Jaccard, if that reaches the threshold."""
        best: tuple[Hashable, float] | None = None
        for key in self.query(signature):
            similarity = estimated_jaccard(signature, self._signatures[key])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def check_and_add(
        self, text: str, key: Hashable | None = None
    ) -> tuple[Hashable, float] | None:
        """The indexed text this one nearly duplicates, as (key, estimated Jaccard); or None,
        after indexing the text under `key` (default: the next free integer).

        A text with no letters or digits has nothing to compare: it is never a duplicate and is
        not indexed (exact deduplication and length filters are the tools for those).
        """
        signature = self.signature(text)
        if signature[0] == EMPTY_SLOT:
            return None
        match = self.best_match(signature)
        if match is None:
            self.add(self._free_key() if key is None else key, signature)
        return match

    def is_duplicate(self, text: str, key: Hashable | None = None) -> bool:
        """True if the text nearly duplicates an indexed one; otherwise index it, return False."""
        return self.check_and_add(text, key) is not None

    def _free_key(self) -> int:
        while self._next_key in self._signatures:
            self._next_key += 1
        return self._next_key


# ---------------------------------------------------------------- streaming removal


@dataclass(frozen=True, slots=True)
class RemovedText:
    """A text dropped as a near-duplicate: where it was, what it resembled, and how closely."""

    position: int  # index of the removed text in the input stream
    kept_position: int  # index of the earlier, kept text it nearly duplicates
    similarity: float  # their estimated Jaccard similarity
    excerpt: str  # the start of the removed text


@dataclass(slots=True)
class NearDedupReport:
    """What near-duplicate removal did; filled in while its iterator is consumed."""

    threshold: float
    kept: int = 0
    removed: int = 0
    examples: list[RemovedText] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.removed} near-duplicates removed (estimated Jaccard ≥ {self.threshold}), "
            f"{self.kept} texts kept"
        )


def remove_near_duplicates(
    texts: Iterable[str],
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    seed: int = 1,
    n: int | None = None,
    unit: str = "auto",
    max_examples: int = 5,
    excerpt_chars: int = 200,
) -> tuple[Iterator[str], NearDedupReport]:
    """Stream the texts that are not near-duplicates of an earlier text, in their order, and a
    report that counts the removed ones and keeps the first `max_examples` of them.

    The index is built now, so bad settings fail before the first text is read.
    """
    index = NearDuplicateIndex(threshold, num_perm, seed, n=n, unit=unit)
    report = NearDedupReport(threshold)

    def kept_texts() -> Iterator[str]:
        for position, text in enumerate(texts):
            match = index.check_and_add(text, key=position)
            if match is None:
                report.kept += 1
                yield text
                continue
            report.removed += 1
            if len(report.examples) < max_examples:
                kept_position, similarity = match
                example = RemovedText(
                    position, int(kept_position), similarity, text[:excerpt_chars]
                )
                report.examples.append(example)

    return kept_texts(), report
