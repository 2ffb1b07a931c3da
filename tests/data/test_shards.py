"""Token shards: prepare round trip, dtype switch, document split, meta.json, window sampling."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data import corpus
from lmforge.data.batches import clm_batch, step_generator
from lmforge.data.corpus import Document, stream_corpus
from lmforge.data.shards import TokenShards, token_dtype, write_shards
from lmforge.errors import DataError
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.tokenizer import EOT, Tokenizer


def _load(out: Path) -> tuple[TokenShards, Tokenizer]:
    return TokenShards(out), Tokenizer.load(out / "tokenizer.json")


def _split_tokens(shards: TokenShards, split: str) -> np.ndarray:
    arrays = shards.arrays[split]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _decoded(shards: TokenShards, tokenizer: Tokenizer, split: str) -> str:
    return tokenizer.decode(_split_tokens(shards, split).tolist())


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(item == other for other in it) for item in part)


def _write_docs(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"doc_{i:03d}.txt").write_text(f"Document number {i}: " + "words " * (5 + i % 7))
    return root


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_round_trip(tmp_path: Path, corpus_dir: Path, kind: str) -> None:
    out = tmp_path / f"data_{kind}"
    prepare(PrepareOptions(inputs=[str(corpus_dir)], out=out, tokenizer=kind, vocab_size=400))
    shards, tokenizer = _load(out)
    expected = [d.text for d in stream_corpus([str(corpus_dir)])[0]]

    pieces = {}
    for split in ("train", "val"):
        text = _decoded(shards, tokenizer, split)
        assert text.startswith(EOT)  # every document, the first included, starts with EOT
        pieces[split] = text.split(EOT)[1:]
        assert "".join(EOT + p for p in pieces[split]) == text
    # Every cleaned document appears exactly once, in corpus order within each split.
    assert sorted(pieces["train"] + pieces["val"]) == sorted(expected)
    assert _is_subsequence(pieces["train"], expected)
    assert _is_subsequence(pieces["val"], expected)
    assert len(pieces["val"]) == shards.meta["splits"]["val"]["documents"] > 0
    assert len(pieces["train"]) == shards.meta["splits"]["train"]["documents"]


def test_long_file_round_trips_through_shards(tmp_path: Path) -> None:
    """Chunks of one long file are joined without EOT, so the file decodes back in one piece."""
    src = tmp_path / "src"
    src.mkdir()
    text = "\n".join(
        f"Block {b}.\n" + "".join(f"line {b}.{j} of text\n" for j in range(20))
        for b in range(2 * corpus.CHUNK_CHARS // 300)
    )
    (src / "long.txt").write_text(text)
    (src / "short.txt").write_text("a short second document")
    out = tmp_path / "data"
    prepare(PrepareOptions(inputs=[str(src)], out=out, tokenizer="char", val_fraction=0))
    shards, tokenizer = _load(out)
    assert shards.num_tokens("val") == 0
    assert _decoded(shards, tokenizer, "train") == (
        EOT + corpus.clean_text(text) + EOT + "a short second document"
    )


def test_write_shards_splits_into_files_of_at_most_shard_tokens(tmp_path: Path) -> None:
    docs = [Document(f"document {i} " + "abc " * i, str(i)) for i in range(30)]
    tokenizer = Tokenizer.train_char(d.text for d in docs)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    write_shards(docs, tokenizer, tmp_path / "one", val_fraction=0.2)
    meta = write_shards(docs, tokenizer, tmp_path / "many", val_fraction=0.2, shard_tokens=97)
    one, many = TokenShards(tmp_path / "one"), TokenShards(tmp_path / "many")
    for split in ("train", "val"):
        files = meta["splits"][split]["files"]
        assert len(files) > 1
        assert all(f["tokens"] == 97 for f in files[:-1])
        assert 0 < files[-1]["tokens"] <= 97
        assert np.array_equal(_split_tokens(one, split), _split_tokens(many, split))
        assert [len(a) for a in many.arrays[split]] == [f["tokens"] for f in files]


# ---------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    ("vocab_size", "dtype"),
    [
        (97, np.uint16),
        (50257, np.uint16),
        (65535, np.uint16),
        (65536, np.uint32),
        (200_000, np.uint32),
    ],
)
def test_token_dtype(vocab_size: int, dtype: type) -> None:
    assert token_dtype(vocab_size) == np.dtype(dtype)


def test_large_vocab_is_stored_as_uint32_without_truncation(tmp_path: Path) -> None:
    alphabet = "".join(chr(0x10000 + i) for i in range(70_000))  # 70,002 tokens with EOT/UNK
    tokenizer = Tokenizer.train_char([alphabet])
    high = alphabet[-40:]  # ids near 70,000: they wrap around if written as uint16
    docs = [Document(high, "a"), Document(alphabet[:30], "b")]
    meta = write_shards(docs, tokenizer, tmp_path, val_fraction=0.5)
    shards = TokenShards(tmp_path)
    assert meta["dtype"] == "uint32"
    assert all(a.dtype == np.uint32 for a in shards.arrays["train"])
    train = _split_tokens(shards, "train")
    assert int(train.max()) > 65535
    assert tokenizer.decode(train.tolist()) == EOT + high
    assert tokenizer.decode(_split_tokens(shards, "val").tolist()) == EOT + alphabet[:30]


def test_small_vocab_is_stored_as_uint16(prepared_dir: Path) -> None:
    shards = TokenShards(prepared_dir)
    assert shards.meta["dtype"] == "uint16"
    assert all(a.dtype == np.uint16 for s in ("train", "val") for a in shards.arrays[s])


# ---------------------------------------------------------------- split by document


@pytest.mark.parametrize(("count", "val_fraction"), [(40, 0.1), (57, 0.1), (50, 0.25), (9, 0.5)])
def test_val_split_takes_about_val_fraction_of_documents(
    tmp_path: Path, count: int, val_fraction: float
) -> None:
    src = _write_docs(tmp_path / "src", count)
    out = tmp_path / "data"
    meta = prepare(
        PrepareOptions(inputs=[str(src)], out=out, tokenizer="char", val_fraction=val_fraction)
    )
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == count
    assert abs(splits["val"]["documents"] - count * val_fraction) <= 1
    shards, tokenizer = _load(out)
    assert _decoded(shards, tokenizer, "val").count(EOT) == splits["val"]["documents"]
    assert _decoded(shards, tokenizer, "train").count(EOT) == splits["train"]["documents"]


def test_few_documents_put_the_last_one_in_val(tmp_path: Path) -> None:
    src = _write_docs(tmp_path / "src", 3)
    out = tmp_path / "data"
    meta = prepare(PrepareOptions(inputs=[str(src)], out=out, tokenizer="char"))
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["splits"]["val"]["documents"] == 1
    shards, tokenizer = _load(out)
    assert _decoded(shards, tokenizer, "val") == EOT + (src / "doc_002.txt").read_text().strip()


def test_single_document_gets_a_tail_val_split(tmp_path: Path) -> None:
    text = "One lonely document, long enough to split into a head and a tail. " * 20
    (tmp_path / "only.txt").write_text(text)
    out = tmp_path / "data"
    meta = prepare(PrepareOptions(inputs=[str(tmp_path / "only.txt")], out=out, tokenizer="char"))
    shards, tokenizer = _load(out)
    n_train, n_val = shards.num_tokens("train"), shards.num_tokens("val")
    assert n_train > 0
    assert n_val > 0
    assert meta["splits"]["val"]["documents"] == 1
    assert n_val == int((n_train + n_val) * 0.1)
    # The split is a cut of one token stream: head + tail is the whole document.
    whole = np.concatenate([_split_tokens(shards, "train"), _split_tokens(shards, "val")])
    assert tokenizer.decode(whole.tolist()) == EOT + text.strip()


def test_zero_val_fraction_puts_everything_in_train(tmp_path: Path, corpus_dir: Path) -> None:
    out = tmp_path / "data"
    meta = prepare(
        PrepareOptions(inputs=[str(corpus_dir)], out=out, tokenizer="char", val_fraction=0)
    )
    assert meta["splits"]["val"]["tokens"] == 0
    assert meta["splits"]["train"]["documents"] == 40
    with pytest.raises(DataError, match="val split"):
        TokenShards(out).check_fits("val", 17)


# ---------------------------------------------------------------- meta.json and integrity


def test_meta_json_describes_the_shards(prepared_dir: Path) -> None:
    meta = json.loads((prepared_dir / "meta.json").read_text())
    tokenizer = Tokenizer.load(prepared_dir / "tokenizer.json")
    assert meta["vocab_size"] == tokenizer.vocab_size
    assert meta["dtype"] == "uint16"
    assert meta["eot_id"] == tokenizer.eot_id
    assert meta["tokenizer_kind"] == "char"
    assert meta["tokenizer_sha256"] == tokenizer.sha256()
    assert (
        meta["tokenizer_sha256"] == hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()
    )
    assert meta["val_fraction"] == 0.1
    shards = TokenShards(prepared_dir)
    for split in ("train", "val"):
        info = meta["splits"][split]
        assert info["tokens"] == sum(f["tokens"] for f in info["files"]) > 0
        assert info["tokens"] == shards.num_tokens(split)
        for entry in info["files"]:
            assert (prepared_dir / entry["name"]).stat().st_size == entry["tokens"] * 2
    # every stored id is a valid token id
    assert (
        max(int(a.max()) for s in ("train", "val") for a in shards.arrays[s]) < meta["vocab_size"]
    )


@pytest.mark.parametrize("cut", [1, 2, 100])
def test_truncated_bin_raises(prepared_dir: Path, cut: int) -> None:
    path = prepared_dir / "train_000.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(DataError, match="truncated") as info:
        TokenShards(prepared_dir)
    assert "train_000.bin" in str(info.value)


def test_missing_bin_raises(prepared_dir: Path) -> None:
    (prepared_dir / "val_000.bin").unlink()
    with pytest.raises(DataError, match=r"val_000\.bin"):
        TokenShards(prepared_dir)


def test_missing_or_corrupt_meta_raises(prepared_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a prepared data directory"):
        TokenShards(tmp_path / "empty")
    (prepared_dir / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        TokenShards(prepared_dir)
    (prepared_dir / "meta.json").write_text('{"dtype": "uint16"}')
    with pytest.raises(DataError, match="corrupt"):
        TokenShards(prepared_dir)


# ---------------------------------------------------------------- sampling windows


def _occurs_in(row: np.ndarray, arrays: list[np.ndarray]) -> bool:
    for array in arrays:
        if len(array) < len(row):
            continue
        windows = np.lib.stride_tricks.sliding_window_view(np.asarray(array), len(row))
        if (windows == row).all(axis=1).any():
            return True
    return False


def test_sample_windows_is_deterministic(prepared_dir: Path) -> None:
    shards = TokenShards(prepared_dir)
    a = shards.sample_windows("train", 8, 17, torch.Generator().manual_seed(5))
    b = shards.sample_windows("train", 8, 17, torch.Generator().manual_seed(5))
    c = shards.sample_windows("train", 8, 17, torch.Generator().manual_seed(6))
    assert a.shape == (8, 17)
    assert a.dtype == torch.int64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampled_windows_are_consecutive_slices_of_their_split(
    prepared_dir: Path, generator: torch.Generator
) -> None:
    shards = TokenShards(prepared_dir)
    for split in ("train", "val"):
        windows = shards.sample_windows(split, 16, 33, generator)
        assert len({tuple(w.tolist()) for w in windows}) > 1  # random starts, not one window
        for row in windows.numpy():
            assert _occurs_in(row, shards.arrays[split])


def test_windows_never_cross_shard_files(tmp_path: Path) -> None:
    # Two shard files whose tokens differ completely: a window mixing them would contain both.
    docs = [Document("a" * 60, "a"), Document("b" * 60, "b")]
    tokenizer = Tokenizer.train_char(["ab"])
    write_shards(docs, tokenizer, tmp_path, val_fraction=0, shard_tokens=61)
    shards = TokenShards(tmp_path)
    assert len(shards.arrays["train"]) == 2
    a_id, b_id = tokenizer.encode("ab")
    windows = shards.sample_windows("train", 256, 20, torch.Generator().manual_seed(0))
    for row in windows.tolist():
        assert not (a_id in row and b_id in row)
    lasts = {row[-1] for row in windows.tolist()}
    assert lasts == {a_id, b_id}  # both files are drawn from


def test_window_batch_is_shifted_by_one(prepared_dir: Path, generator: torch.Generator) -> None:
    windows = TokenShards(prepared_dir).sample_windows("train", 4, 17, generator)
    batch = clm_batch(windows)
    assert batch.inputs.shape == batch.targets.shape == (4, 16)
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert torch.equal(batch.targets[:, -1], windows[:, -1])


def test_sequential_windows_predict_each_token_once(prepared_dir: Path) -> None:
    shards = TokenShards(prepared_dir)
    window = 17
    windows = list(shards.sequential_windows("val", window))
    assert windows
    targets = torch.cat([w[1:] for w in windows]).numpy()
    val = _split_tokens(shards, "val")
    assert np.array_equal(targets, val[1 : 1 + len(targets)])
    assert len(val) - 1 - len(targets) < window - 1  # at most one partial window left over


# ---------------------------------------------------------------- step_generator


def _draw(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2**62, (4,), generator=generator)


def test_step_generator_is_equal_for_equal_keys() -> None:
    assert torch.equal(_draw(step_generator(1337, 0, 5, 1)), _draw(step_generator(1337, 0, 5, 1)))


def test_step_generator_differs_across_steps_micro_steps_and_seeds() -> None:
    keys = [(1337, 0, step, micro) for step in range(50) for micro in range(2)]
    keys += [(1337, 1, i) for i in range(20)]  # validation batches
    keys += [(7, 0, 0, 1), (1337, 0, 1, 0)]
    draws = {tuple(_draw(step_generator(*k)).tolist()) for k in keys}
    assert len(draws) == len(set(keys))


def test_step_generator_ignores_prior_generator_use() -> None:
    first = step_generator(3, 0, 9)
    _draw(first)
    assert torch.equal(_draw(step_generator(3, 0, 9)), _draw(step_generator(3, 0, 9)))
    assert not torch.equal(_draw(first), _draw(step_generator(3, 0, 9)))


def test_same_step_gives_the_same_windows(prepared_dir: Path) -> None:
    shards = TokenShards(prepared_dir)
    a = shards.sample_windows("train", 4, 17, step_generator(1337, 0, 10, 0))
    b = shards.sample_windows("train", 4, 17, step_generator(1337, 0, 10, 0))
    c = shards.sample_windows("train", 4, 17, step_generator(1337, 0, 11, 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
