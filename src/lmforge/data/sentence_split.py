"""Text into sentences (for BERT's next-sentence prediction) and Chinese words (jieba).

Plain text work only, no torch: the processes that encode shards in parallel import this.
"""

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.errors import DataError

# Letters of Chinese, Japanese and Korean, for regex character classes: Han ideographs (with
# 々 and 〇), Kana (with half-width Katakana) and Hangul (syllables and jamo).
HAN = "\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
KANA = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"

_ENDERS = ".!?…。！？｡．"  # ASCII, ellipsis, CJK full stops and full-width forms
_CJK_STOPS = "。！？｡"  # these end a sentence wherever they stand
_CLOSERS = "\"'”’)\\]}」』）】》〉〕〗〙〛］｝＂＇｣"
_CJK_OPENERS = "“‘「『（【《〈〔〖［｛"

# A run of enders with the closing quotes and brackets after it ("。”", "?!", "……」", ".\")"),
# matched whole from its first character, possessively (no backtracking on long runs of dots).
_END = re.compile(rf"(?<![{_ENDERS}])[{_ENDERS}]++(?:[{_CLOSERS}]++[{_ENDERS}]++)*+[{_CLOSERS}]*+")
_NEXT_LATIN = re.compile(r"\s+[\"'“‘(\[]?[A-Z0-9À-ÖØ-ÞΑ-ΩА-Я]")
_NEXT_CJK = re.compile(rf"(\s*)[{_CJK_OPENERS}]?[{HAN}{KANA}{HANGUL}]")


def _ends_sentence(run: str, text: str, after: int) -> bool:
    """Whether the ender run `run`, followed by text[after:], closes a sentence.

    A run with a CJK stop (。！？｡) always does. Any other run (. ! ? … ．) does when whitespace
    and a capital (Latin, Greek, Cyrillic), digit or opening quote or bracket follow, as in
    English, so "3.14", "e.g. this" and "out.Next" stay whole; or when CJK text follows: right
    after ! or ?, but only after whitespace for dots alone, since a Chinese "……" often trails off
    mid-sentence. Abbreviations ("Mr. Smith") are split too: a known, harmless error.
    """
    if any(c in _CJK_STOPS for c in run) or _NEXT_LATIN.match(text, after):
        return True
    cjk = _NEXT_CJK.match(text, after)
    return cjk is not None and (bool(cjk.group(1)) or "!" in run or "?" in run)


def split_sentences(text: str) -> list[str]:
    """The non-empty, whitespace-stripped sentences of text, in order.

    A sentence ends after a run of enders and the closing quotes and brackets that follow it,
    which stay with it (`他说：“很好。”` | `然后走了。`, `真的吗？！` | `我不信。`), when
    `_ends_sentence` says so, and at every line break.
    """

    def mark(end: re.Match[str]) -> str:
        run = end.group()
        return run + "\n" if _ends_sentence(run, text, end.end()) else run

    lines = _END.sub(mark, text).split("\n")
    return [s for s in (line.strip() for line in lines) if s]


SEGMENTERS = ("none", "jieba")


def load_jieba() -> Any:
    """The jieba module, quiet, or a DataError that says how to install it."""
    try:
        import jieba
    except ImportError:
        raise DataError(
            "--segmenter jieba needs the jieba package: pip install 'lmforge[zh]'"
        ) from None
    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on stderr
    return jieba


def word_start_flags(segment: Any, text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """uint8 (n,): 1 where the token at offsets[i] (character offsets into text) starts a word.

    A token starts a word when the segmenter's word holding its first character differs from the
    one holding the previous token's first character; the first token always starts one.
    """
    word_of = np.zeros(len(text) + 1, dtype=np.int64)
    for index, (_, start, end) in enumerate(segment.tokenize(text)):
        word_of[start:end] = index
    firsts = np.array([start for start, _ in offsets], dtype=np.int64).reshape(-1)
    words = word_of[np.minimum(firsts, len(text))]
    return np.concatenate([[True], words[1:] != words[:-1]])[: len(firsts)].astype(np.uint8)
