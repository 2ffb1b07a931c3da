"""`prepare --segmenter jieba`: word-start flags stored with wordpiece shards, loaded and checked
by TokenShards, and whole-word masking of Chinese by jieba's words instead of by character."""

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data.corpus import Document
from lmforge.data.mlm import BertVocab, continuation_table, mlm_batch, word_starts
from lmforge.data.sentence_split import HAN, load_jieba, word_start_flags
from lmforge.data.sentences import WORD_START_SHIFT, nsp_examples, unpack_word_starts
from lmforge.data.shards import TokenShards, write_shards
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer

jieba = pytest.importorskip("jieba")

PLACES = ["这家酒店", "那个宾馆", "我们住的民宿", "市中心的酒店", "海边的客栈"]
THINGS = ["房间", "卫生间", "早餐", "前台", "服务", "环境", "位置", "停车场"]
WORDS = ["非常干净", "特别舒服", "十分安静", "比较吵闹", "有点破旧", "相当方便", "很不错"]


def _documents(n: int = 60) -> list[Document]:
    rng = random.Random(3)
    docs = []
    for i in range(n):
        sentences = [
            f"{rng.choice(PLACES)}的{rng.choice(THINGS)}{rng.choice(WORDS)}。"
            for _ in range(rng.randint(3, 6))
        ]
        docs.append(Document(f"第{i}次入住。" + "".join(sentences), str(i)))
    return docs


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_wordpiece((d.text for d in _documents()), 300)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    out = tmp_path_factory.mktemp("segmented")
    write_shards(
        _documents(), tokenizer, out, val_fraction=0.2, shard_tokens=300, segmenter="jieba"
    )
    return out


def test_word_start_flags_follow_jieba_words(tokenizer: Tokenizer) -> None:
    text = "这家酒店的停车场非常干净。"
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    flags = word_start_flags(load_jieba(), text, encoding.offsets)
    words = [w for w, _, _ in load_jieba().tokenize(text)]
    assert len(flags) == len(encoding.ids)
    # every Han character is its own WordPiece token: the flags restate jieba's words
    pieces, word = [], ""
    for (start, end), flag in zip(encoding.offsets, flags, strict=True):
        if flag and word:
            pieces.append(word)
            word = ""
        word += text[start:end]
    pieces.append(word)
    assert pieces == words
    assert "停车场" in words
    assert word_start_flags(load_jieba(), "", []).shape == (0,)


def test_shards_list_and_load_word_start_flags(segmented: Path, tokenizer: Tokenizer) -> None:
    meta = json.loads((segmented / "meta.json").read_text())
    assert meta["segmenter"] == "jieba"
    shards = TokenShards(segmented)
    assert shards.segmenter == "jieba"
    for split in ("train", "val"):
        files = meta["splits"][split]["files"]
        assert len(files) > (split == "train")  # several train shards of at most 300 tokens
        flags = shards.word_starts(split)
        for entry, array, flag in zip(files, shards.arrays[split], flags, strict=True):
            assert entry["word_starts"] == entry["name"].replace(".bin", ".words.bin")
            assert len(flag) == len(array) == entry["tokens"]
            assert set(np.unique(flag)) <= {0, 1}
            assert flag[array == tokenizer.sep_id].all()  # the document separator starts a word
        # packed ids unpack to the plain corpus, and the flags to the files' flags
        plain, packed = shards.sentences(split), shards.sentences(split, word_starts=True)
        stream = np.concatenate(flags)
        for i in range(plain.num_sentences):
            start, end = plain.spans[i]
            ids, starts = unpack_word_starts(torch.from_numpy(packed.sentence(i)))
            assert ids.tolist() == plain.sentence(i).tolist()
            assert starts.tolist() == stream[start:end].astype(bool).tolist()
            assert starts[0]  # a sentence starts a word
    assert 0 < np.concatenate(shards.word_starts("train")).mean() < 0.9  # words of 2+ characters


def test_truncated_or_missing_flags_are_refused(segmented: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(segmented, copy)
    meta = json.loads((copy / "meta.json").read_text())
    name = meta["splits"]["train"]["files"][0]["word_starts"]
    (copy / name).write_bytes((copy / name).read_bytes()[:-1])
    with pytest.raises(DataError, match="missing or truncated"):
        TokenShards(copy).word_starts("train")
    (copy / name).unlink()
    with pytest.raises(DataError, match="prepare the data again"):
        TokenShards(copy).sentences("train", word_starts=True)


def test_unsegmented_data_has_no_word_starts(tmp_path: Path, tokenizer: Tokenizer) -> None:
    meta = write_shards(_documents(), tokenizer, tmp_path, val_fraction=0.2)
    assert "segmenter" not in meta
    assert all("word_starts" not in f for f in meta["splits"]["train"]["files"])
    assert not list(tmp_path.glob("*.words.bin"))
    shards = TokenShards(tmp_path)
    assert shards.segmenter == "none"
    with pytest.raises(DataError, match="--segmenter"):
        shards.word_starts("train")


def test_segmenter_needs_wordpiece_and_jieba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bpe = Tokenizer.train_bpe((d.text for d in _documents(10)), 300)
    with pytest.raises(DataError, match="wordpiece"):
        write_shards(_documents(10), bpe, tmp_path / "bpe", segmenter="jieba")
    with pytest.raises(DataError, match="use none or jieba"):
        write_shards(_documents(10), bpe, tmp_path / "x", segmenter="thulac")
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba now raises ImportError
    with pytest.raises(DataError, match=r"pip install 'lmforge\[zh\]'"):
        load_jieba()


def _masked_words(segmented: Path, tokenizer: Tokenizer, seed: int, nsp: bool):
    """One mlm_batch of the segmented train split, its word index per token and the masking."""
    corpus = TokenShards(segmented).sentences("train", word_starts=True)
    vocab = BertVocab.from_tokenizer(tokenizer)
    vocab = BertVocab(**{**vocab.__dict__, "segmented": True})
    # mlm_batch draws the examples first, from the same generator: replay that draw for the flags
    ids = (vocab.cls_id, vocab.sep_id, vocab.pad_id)
    packed = nsp_examples(corpus, 8, 32, torch.Generator().manual_seed(seed), *ids, nsp)
    inputs, starts = unpack_word_starts(packed.inputs)
    batch = mlm_batch(corpus, 8, 32, torch.Generator().manual_seed(seed), vocab, nsp)
    assert torch.equal(batch.inputs[batch.targets == -100], inputs[batch.targets == -100])
    assert int(batch.inputs.max()) < tokenizer.vocab_size  # no packed flag leaks into the inputs
    special = vocab.special[inputs] | ~packed.attention_mask
    after_special = torch.nn.functional.pad(special[:, :-1], (1, 0), value=True)
    word = (starts | special | after_special).long().cumsum(1)
    return word, batch.targets != -100, special


@pytest.mark.parametrize("nsp", [True, False])
def test_jieba_whole_word_masking_never_splits_a_word(
    segmented: Path, tokenizer: Tokenizer, nsp: bool
) -> None:
    whole_multi = 0
    for seed in range(60):
        word, chosen, special = _masked_words(segmented, tokenizer, seed, nsp)
        assert not (chosen & special).any()
        for row in range(word.shape[0]):
            for w in word[row][chosen[row]].unique():
                members = (word[row] == w) & ~special[row]
                assert chosen[row][members].all(), (seed, row, int(w))  # masked whole
                whole_multi += int(members.sum()) > 1
    assert whole_multi > 100  # multi-character words were masked, not just single characters


def test_without_the_segmenter_chinese_is_masked_per_character(tokenizer: Tokenizer) -> None:
    # no ## Han pieces: BERT's normaliser makes every Han character a word of its own
    vocab = tokenizer.vocab()
    continuation = continuation_table(tokenizer)
    han = [i for i, t in enumerate(vocab) if t.lstrip("#") and t.lstrip("#")[0] in _han()]
    assert han
    assert not continuation[han].any()
    ids = torch.tensor([tokenizer.encode("我们住的民宿的停车场非常干净。")])
    assert word_starts(ids, continuation).all()


def _han() -> set[str]:
    import re

    return {c for d in _documents() for c in d.text if re.fullmatch(f"[{HAN}]", c)}


def test_packed_flags_sit_above_any_token_id() -> None:
    assert (1 << WORD_START_SHIFT) > 2**32 - 1  # uint32 ids, the largest shard dtype


def _segmented_masking_rate(cfg, shards, tokenizer) -> tuple[int, int]:
    """(multi-token jieba words masked whole, those masked in part) over 20 train batches."""
    from lmforge.data.batches import step_generator
    from lmforge.jobs.session import batch_sources

    train_batch, _ = batch_sources(cfg, shards, tokenizer)
    corpus = shards.sentences("train", word_starts=True)
    vocab = BertVocab.from_tokenizer(tokenizer)
    whole = part = 0
    for step in range(20):
        batch = train_batch(step, 0)
        # replay the examples the source drew first, from the same generator, for their flags
        generator = step_generator(cfg.train.seed, 0, step, 0)
        ids = (vocab.cls_id, vocab.sep_id, vocab.pad_id)
        packed = nsp_examples(corpus, cfg.train.batch_size, 32, generator, *ids, False)
        inputs, starts = unpack_word_starts(packed.inputs)
        chosen = batch.targets != -100
        assert torch.equal(torch.where(chosen, batch.targets, batch.inputs), inputs)
        special = vocab.special[inputs] | ~packed.attention_mask
        after_special = torch.nn.functional.pad(special[:, :-1], (1, 0), value=True)
        word = (starts | special | after_special).long().cumsum(1)
        for row in range(len(word)):
            for w in word[row][chosen[row]].unique():
                members = (word[row] == w) & ~special[row]
                if members.sum() > 1:
                    whole += bool(chosen[row][members].all())
                    part += not chosen[row][members].all()
    return whole, part


def test_prepare_and_pretrain_with_segmenter_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.cli.main import main
    from lmforge.config import RunConfig, from_dict
    from lmforge.jobs.session import open_data

    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n\n".join(d.text for d in _documents()), encoding="utf-8")
    data = tmp_path / "data"
    prepare = ["prepare", "--input", str(corpus), "--out", str(data), "--documents", "paragraph"]
    prepare += ["--tokenizer", "wordpiece", "--vocab-size", "300"]
    assert main([*prepare, "--segmenter", "jieba"]) == 0
    assert json.loads((data / "meta.json").read_text())["segmenter"] == "jieba"
    sets = ["model.arch=bert", "train.objective=mlm", "model.n_layer=1", "model.n_head=2"]
    sets += ["model.n_embd=16", "model.block_size=32", "train.batch_size=4", "train.max_steps=4"]
    sets += ["train.eval_interval=2", "train.eval_batches=1", "train.checkpoint_interval=4"]
    sets += ["train.warmup_steps=1", "train.progress=false", "data.whole_word_masking=true"]
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*args, *(f"--set={s}" for s in sets)]) == 0
    # the training batches mask jieba's words whole; per-character masking splits many
    base = {"model": {"arch": "bert", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32}}
    base["train"] = {"objective": "mlm", "batch_size": 8}
    rates = {}
    for whole_word in (True, False):
        data_cfg = {"dir": str(data), "whole_word_masking": whole_word}
        cfg = from_dict(RunConfig, {**base, "data": data_cfg})
        shards, tokenizer = open_data(cfg)
        rates[whole_word] = _segmented_masking_rate(cfg, shards, tokenizer)
    assert rates[True][0] > 20
    assert rates[True][1] == 0
    assert rates[False][1] > rates[False][0]
    capsys.readouterr()
    # a bpe tokenizer, or no jieba, is a user error
    code = main([*prepare[:-4], "--out", str(tmp_path / "bpe"), "--segmenter", "jieba"])
    assert code == 2
    assert "use --tokenizer wordpiece" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "jieba", None)
    assert main([*prepare[:-4], *prepare[-4:], "--segmenter", "jieba", "--overwrite"]) == 2
    assert "pip install 'lmforge[zh]'" in capsys.readouterr().err
