"""Faster shard encoding: the piece cache gives tokenizers' own ids, worker processes give the
same shards as one process, the tokenizer's training sample is uniform and bounded, and the
quicker clean_text rewrites nothing differently."""

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lmforge.data.corpus import Document, clean_text, training_sample
from lmforge.data.shards import write_shards
from lmforge.data.token_encoding import (
    DocumentText,
    EncodeSpec,
    PieceEncoder,
    cuts_at_whitespace,
    encode_batch,
    encode_batches,
)
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.tokenizer import Tokenizer

TRAINING = [
    "The quick brown fox jumps over the lazy dog. Don't panic: it's 3.14159!",
    "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ１２３ and café, naïve façade; 深度学习模型很好。“你好”，他说。",
    "def f(x):\n\treturn x  # tabs\n\n\n  indented   spaces\u00a0nbsp\u3000ideographic",
] * 20

# Text with everything the piece cut has to respect: runs of mixed whitespace (Unicode ones too,
# and \x1c-\x1f, which only Python counts as whitespace), contractions, digits, punctuation,
# accents, CJK and the special tokens' own text.
PIECES = [
    "the",
    " the",
    "  ",
    " ",
    "\n",
    "\n\n",
    "\t",
    "\r",
    "\u00a0",
    "\u3000",
    "\u2003",
    "\x85",
    "\x1c",
    "\x1f",
    "don't",
    "'s",
    "'ll",
    "123",
    "4.5",
    "!",
    "?!",
    "...",
    "—",
    "é",
    "e\u0301",
    "ＡＢＣ",
    "深度",
    "学习。",
    "“",
    "”",
    "<|endoftext|>",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "ß",
    "İ",
]
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@pytest.fixture(scope="module")
def tokenizers_by_kind() -> dict[str, Tokenizer]:
    return {
        "bpe": Tokenizer.train_bpe(TRAINING, 400),
        "bpe-nfkc": Tokenizer.train_bpe(TRAINING, 400, normalize="nfkc"),
        "wordpiece": Tokenizer.train_wordpiece(TRAINING, 300),
        "wordpiece-cased-nfkc": Tokenizer.train_wordpiece(
            TRAINING, 300, lowercase=False, normalize="nfkc"
        ),
        "char": Tokenizer.train_char(TRAINING),
        "char-nfkc": Tokenizer.train_char(TRAINING, normalize="nfkc"),
    }


def _direct(tokenizer: Tokenizer, batch: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.backend.encode_batch(batch, add_special_tokens=False)]


@pytest.mark.parametrize(
    "kind", ["bpe", "bpe-nfkc", "wordpiece", "wordpiece-cased-nfkc", "char", "char-nfkc"]
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(texts, min_size=1, max_size=6))
def test_piece_cache_gives_the_tokenizers_own_ids(tokenizers_by_kind, kind, batch) -> None:
    tokenizer = tokenizers_by_kind[kind]
    encoder = PieceEncoder(tokenizer.backend.to_str())
    assert encoder.cacheable
    got = encoder.encode(batch)
    again = encoder.encode(batch)  # now every piece comes from the cache
    expected = _direct(tokenizer, batch)
    assert [g.tolist() for g in got] == expected
    assert [g.tolist() for g in again] == expected


def test_piece_cache_is_used_and_bounded(tokenizers_by_kind, monkeypatch) -> None:
    from lmforge.data import token_encoding

    encoder = PieceEncoder(tokenizers_by_kind["bpe"].backend.to_str())
    text = " ".join(f"word{i % 50}" for i in range(2000))
    encoder.encode([text])
    # one entry per distinct piece, not per occurrence: " word0" .. " word49" and the first "word0"
    assert len(encoder.index) == 51
    monkeypatch.setattr(token_encoding, "CACHE_LIMIT", 10)
    encoder.encode(["alpha beta"])  # over the limit: the cache starts afresh
    assert set(encoder.index) == {"alpha", " beta"}


def test_an_unknown_pre_tokenizer_is_encoded_whole() -> None:
    """Metaspace prepends ▁ to the first word only: pieces encoded apart would change ids."""
    backend = HFTokenizer(models.WordLevel({"[UNK]": 0, "▁a": 1, "▁b": 2, "b": 3}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    config = backend.to_str()
    encoder = PieceEncoder(config)
    assert not encoder.cacheable
    assert [ids.tolist() for ids in encoder.encode(["a b", "b"])] == [
        e.ids for e in backend.encode_batch(["a b", "b"])
    ]


def test_cuts_at_whitespace_refuses_special_tokens_that_strip(tokenizers_by_kind) -> None:
    import json

    config = json.loads(tokenizers_by_kind["bpe"].backend.to_str())
    assert cuts_at_whitespace(config)
    config["added_tokens"][0]["lstrip"] = True
    assert not cuts_at_whitespace(config)


def test_worker_processes_write_the_same_shards(tmp_path: Path, tokenizers_by_kind) -> None:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "深度", "学习。", "Don't", "stop!"]
    docs = [
        Document(" ".join(rng.choice(words, size=int(rng.integers(5, 60)))), f"d{i}")
        for i in range(120)
    ]
    for kind in ("bpe", "wordpiece"):
        tokenizer = tokenizers_by_kind[kind]
        outs = []
        for workers in (1, 2):
            out = tmp_path / f"{kind}-{workers}"
            out.mkdir()
            write_shards(docs, tokenizer, out, batch_chars=2000, workers=workers)
            outs.append(out)
        files = sorted(p.name for p in outs[0].iterdir())
        assert files == sorted(p.name for p in outs[1].iterdir())
        for name in files:
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), (kind, name)


def test_batches_come_back_in_order_from_the_workers(tokenizers_by_kind) -> None:
    spec = EncodeSpec(tokenizers_by_kind["char"].backend.to_str(), sentences=False, separator=0)
    batches = [[DocumentText(f"batch {i} " * (i + 1))] for i in range(9)]
    parallel = list(encode_batches(spec, batches, workers=2))
    serial = [encode_batch(spec, b) for b in batches]
    assert [[d.tokens.tolist() for d in b] for b in parallel] == [
        [d.tokens.tolist() for d in b] for b in serial
    ]


# ---------------------------------------------------------------- the tokenizer's sample


def test_training_sample_keeps_a_small_corpus_whole_and_in_order() -> None:
    texts = [f"document {i}" for i in range(100)]
    assert training_sample(texts, budget_chars=10_000) == texts
    assert training_sample(texts, budget_chars=0) == texts


def test_training_sample_is_bounded_uniform_and_seeded() -> None:
    texts = [f"{i:06d}" + "x" * 94 for i in range(20_000)]  # 100 characters each
    sample = training_sample(texts, budget_chars=100_000)
    assert 950 <= len(sample) <= 1000
    assert sum(map(len, sample)) <= 100_000
    positions = np.array([int(t[:6]) for t in sample])
    assert list(positions) == sorted(positions)  # corpus order
    assert abs(positions.mean() - 10_000) < 600  # spread over the whole corpus, not its head
    assert np.histogram(positions, bins=4, range=(0, 20_000))[0].min() > 200
    assert sample == training_sample(texts, budget_chars=100_000)
    assert sample != training_sample(texts, budget_chars=100_000, seed=1)


def test_tokenizer_sample_mb_changes_what_the_tokenizer_learns(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        vocabulary = [f"topic{i}word{j}" for j in range(8)]
        words = rng.choice(vocabulary, size=400)
        (corpus / f"{i:02d}.txt").write_text(" ".join(words))
    vocabs, tokens = {}, {}
    for mb in (0.0, 0.02):
        out = tmp_path / f"out-{mb}"
        meta = prepare(
            PrepareOptions(inputs=[str(corpus)], out=out, vocab_size=600, tokenizer_sample_mb=mb)
        )
        vocabs[mb] = set(Tokenizer.load(out / "tokenizer.json").vocab())
        tokens[mb] = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
        assert meta["report"]["documents_out"] == 40  # the shards hold every document either way
    assert vocabs[0.0] != vocabs[0.02]
    assert tokens[0.0] < tokens[0.02]  # the sample saw few topics: the rest cost more tokens


# ---------------------------------------------------------------- clean_text


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")


def _reference_clean(text: str) -> str:
    """clean_text as first written: every rewrite, always."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ODD_SPACES.sub(" ", _CONTROL.sub("", text))
    text = re.sub(r"[ \t]+\n", "\n", text + "\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


CLEAN_PIECES = [
    "a",
    "b",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\x1f",
    "\x85",
    "\x9f",
    "\u00a0",
    "\u3000",
    "e\u0301",
    "é",
    " \n",
    "\n\n\n\n",
    "\t\n",
    "深",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(CLEAN_PIECES), max_size=30).map("".join))
def test_clean_text_equals_the_plain_rewrites(text: str) -> None:
    assert clean_text(text) == _reference_clean(text)


def test_workers_flag_reaches_the_encoder_and_starts_a_pool(
    tmp_path: Path, tokenizers_by_kind, monkeypatch
) -> None:
    from lmforge.data import token_encoding
    from lmforge.jobs import prepare as prepare_job

    started = []
    real_pool = token_encoding.ProcessPoolExecutor

    def recording_pool(workers, **kwargs):
        started.append(workers)
        return real_pool(workers, **kwargs)

    monkeypatch.setattr(token_encoding, "ProcessPoolExecutor", recording_pool)
    docs = [Document(f"text number {i} " * 30, f"d{i}") for i in range(40)]
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        write_shards(docs, tokenizers_by_kind["bpe"], out, batch_chars=500, workers=workers)
    assert started == [2]  # one worker: encoded here; two: a pool of two
    seen = []
    monkeypatch.setattr(
        prepare_job, "write_shards", lambda *a, **k: seen.append(k["workers"]) or {}
    )
    (tmp_path / "c.txt").write_text("some words here for a corpus\n" * 20)
    prepare(PrepareOptions(inputs=[str(tmp_path / "c.txt")], out=tmp_path / "o", workers=3))
    assert seen == [3]
