"""Sentence splitting, the wordpiece sentence index in the shards, and NSP pair sampling."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.data import corpus
from lmforge.data.corpus import Document, stream_corpus
from lmforge.data.sentence_split import split_sentences
from lmforge.data.sentences import (
    IS_NEXT,
    NOT_NEXT,
    SentenceCorpus,
    nsp_examples,
    truncated_lengths,
)
from lmforge.data.shards import TokenShards, write_shards
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer

CLS, SEP, PAD = 2, 3, 0

# ---------------------------------------------------------------- splitter


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Ends with a digit. 2024 was a year.", ["Ends with a digit.", "2024 was a year."]),
        ('He said "Hi." Then he left.', ['He said "Hi."', "Then he left."]),
        ("Quoted start. \"Yes,\" she said. 'No.'", ["Quoted start.", '"Yes," she said.', "'No.'"]),
        ("e.g. this stays. pi is 3.14 exactly.", ["e.g. this stays. pi is 3.14 exactly."]),
        ("Version 2.0 is out.Next has no space.", ["Version 2.0 is out.Next has no space."]),
        ("line one\nline two\n\n\nline three  ", ["line one", "line two", "line three"]),
        ("  \n \t\n", []),
        ("", []),
        ("Wait... What?! Really.", ["Wait...", "What?!", "Really."]),
        ("Émile arrived. Ça va. Ölfass!", ["Émile arrived.", "Ça va.", "Ölfass!"]),
        ("你好。世界！再见？", ["你好。", "世界！", "再见？"]),
        ("Mr. Smith came.", ["Mr.", "Smith came."]),  # the documented abbreviation error
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        # closing quotes and brackets stay with the sentence they close
        ("他说：“很好。”然后走了。", ["他说：“很好。”", "然后走了。"]),
        ("她问：‘你去吗？’我说：「去！」", ["她问：‘你去吗？’", "我说：「去！」"]),
        ("「いいえ。」と彼は言った。『はい！』", ["「いいえ。」", "と彼は言った。", "『はい！』"]),
        ("（注意。）下一句。【完】", ["（注意。）", "下一句。", "【完】"]),
        ("他读了《书。》也读了〈诗。〉好。", ["他读了《书。》", "也读了〈诗。〉", "好。"]),
        ('他说："很好!"然后走了。', ['他说："很好!"', "然后走了。"]),
        ("他说：'很好。'然后走了。", ["他说：'很好。'", "然后走了。"]),
        ("他说（很好。)然后［走了。］再见", ["他说（很好。)", "然后［走了。］", "再见"]),
        ("他说：＂很好。＂然后走了。", ["他说：＂很好。＂", "然后走了。"]),
        ('He said ("Hi.") Then he left.', ['He said ("Hi.")', "Then he left."]),
        # several enders in a row stay together
        ("真的吗？！我不信。", ["真的吗？！", "我不信。"]),
        ("真的吗?!我不信。", ["真的吗?!", "我不信。"]),
        ("好。。。走吧", ["好。。。", "走吧"]),
        ("什么……！走吧！！", ["什么……！", "走吧！！"]),
        ("他说：“我不知道……”然后走了。", ["他说：“我不知道……”然后走了。"]),  # trails off
        ("他说：“我不知道……” 然后走了。", ["他说：“我不知道……”", "然后走了。"]),
        ("Wait… What?! Fine.", ["Wait…", "What?!", "Fine."]),
        # no split inside decimals, version numbers or abbreviations
        ("圆周率是3.14。版本２．０发布了！", ["圆周率是3.14。", "版本２．０发布了！"]),
        ("pi is 3.14159. e.g. this stays.", ["pi is 3.14159. e.g. this stays."]),
        ("Dr.王来了。", ["Dr.王来了。"]),
        # English next to CJK text, and Korean
        ("Hello. 你好。", ["Hello.", "你好。"]),
        ("좋아요! 안녕히 가세요.", ["좋아요!", "안녕히 가세요."]),
    ],
)
def test_split_sentences_keeps_cjk_closers_and_ender_runs(text: str, sentences: list[str]):
    assert split_sentences(text) == sentences


def test_long_runs_of_enders_stay_one_run() -> None:
    assert split_sentences("a" + "." * 20000 + " b. C") == ["a" + "." * 20000 + " b.", "C"]
    assert split_sentences("好" + "。" * 20000 + "走") == ["好" + "。" * 20000, "走"]


# ---------------------------------------------------------------- sentence index in shards

TEXTS = [
    f"Document {i} begins here. It has a second sentence! Does it have a third? Yes.\n"
    f"A line of its own {i}.\n\nAnother paragraph with {'many ' * (i % 7)}words."
    for i in range(30)
]


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece(TEXTS, vocab_size=200)


def _expected_sentences(tokenizer: Tokenizer, text: str) -> list[list[int]]:
    return [ids for s in split_sentences(text) if (ids := tokenizer.encode(s))]


def _documents(c: SentenceCorpus) -> list[list[list[int]]]:
    return [
        [c.sentence(i).tolist() for i in range(c.documents[d], c.documents[d + 1])]
        for d in range(c.num_documents)
    ]


def test_shards_record_every_sentence_of_every_document(tmp_path: Path, wordpiece: Tokenizer):
    docs = [Document(t, str(i)) for i, t in enumerate(TEXTS)]
    meta = write_shards(docs, wordpiece, tmp_path, val_fraction=0.2, shard_tokens=97)
    shards = TokenShards(tmp_path)
    expected = [_expected_sentences(wordpiece, t) for t in TEXTS]
    val_docs = [expected[i] for i in range(30) if i % 5 == 4]
    train_docs = [expected[i] for i in range(30) if i % 5 != 4]
    for split, want in (("train", train_docs), ("val", val_docs)):
        entry = meta["splits"][split]
        assert len(entry["files"]) > 1  # sentences cross shard-file boundaries
        c = shards.sentences(split)
        assert _documents(c) == want
        assert entry["sentences"]["documents"] == c.num_documents == len(want)
        assert entry["sentences"]["sentences"] == c.num_sentences
        # the stream is [SEP] + sentences per document, nothing else
        stream = np.concatenate(shards.arrays[split]).tolist()
        assert stream == [t for doc in want for t in [SEP] + [x for s in doc for x in s]]
        assert all(stream[c.spans[c.documents[d], 0] - 1] == SEP for d in range(c.num_documents))
    assert meta["separator_id"] == SEP
    assert meta["eot_id"] is None
    assert meta["tokenizer_kind"] == "wordpiece"


def test_bpe_and_char_shards_keep_their_format(prepared_dir: Path) -> None:
    meta = json.loads((prepared_dir / "meta.json").read_text())
    assert "separator_id" not in meta
    assert isinstance(meta["eot_id"], int)
    assert all("sentences" not in meta["splits"][s] for s in ("train", "val"))
    assert sorted(p.name for p in prepared_dir.iterdir() if "sentences" in p.name) == []
    with pytest.raises(DataError, match="--tokenizer wordpiece"):
        TokenShards(prepared_dir).sentences("train")


def test_lone_document_tail_cut_splits_a_sentence_in_two(tmp_path: Path, wordpiece: Tokenizer):
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    write_shards([Document(text, "one")], wordpiece, tmp_path, val_fraction=0.1)
    shards = TokenShards(tmp_path)
    train, val = shards.sentences("train"), shards.sentences("val")
    assert train.num_documents == val.num_documents == 1
    pieces = [train.sentence(i) for i in range(train.num_sentences)]
    pieces += [val.sentence(i) for i in range(val.num_sentences)]
    assert all(len(p) > 0 for p in pieces)
    assert np.concatenate(pieces).tolist() == [
        t for s in _expected_sentences(wordpiece, text) for t in s
    ]


def test_chunks_of_a_long_file_form_one_document(tmp_path: Path, wordpiece: Tokenizer) -> None:
    src = tmp_path / "src"
    src.mkdir()
    paragraph = "".join(f"Line {j} of the text. Another sentence here.\n" for j in range(30))
    (src / "long.txt").write_text("\n".join([paragraph] * (2 * corpus.CHUNK_CHARS // 1300)))
    (src / "short.txt").write_text("A short second document. It has two sentences.")
    documents, _ = stream_corpus([str(src)])
    chunks = list(documents)
    assert sum(d.continued for d in chunks) >= 1
    (tmp_path / "out").mkdir()
    write_shards(chunks, wordpiece, tmp_path / "out", val_fraction=0)
    c = TokenShards(tmp_path / "out").sentences("train")
    assert c.num_documents == 2
    first = c.documents[1]  # the long file's sentences, then the short file's
    assert first == sum(len(_expected_sentences(wordpiece, d.text)) for d in chunks[:-1])
    assert c.spans[first, 0] - c.spans[first - 1, 1] == 1  # one [SEP] between the documents


def test_truncated_sentence_index_raises(tmp_path: Path, wordpiece: Tokenizer) -> None:
    write_shards([Document(t, "x") for t in TEXTS[:5]], wordpiece, tmp_path, val_fraction=0.2)
    path = tmp_path / "train_sentences.bin"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated"):
        TokenShards(tmp_path).sentences("train")


def test_tokens_reads_across_shard_files() -> None:
    arrays = [np.arange(0, 5, dtype=np.uint16), np.arange(5, 7, dtype=np.uint16), np.arange(7, 20)]
    c = SentenceCorpus(arrays, np.array([[1, 19]]), np.array([0, 1]))
    for start in range(20):
        for end in range(start, 20):
            assert c.tokens(start, end).tolist() == list(range(start, end))
    assert c.tokens(3, 9).dtype == np.int64


# ---------------------------------------------------------------- NSP pairs


@pytest.fixture(scope="module")
def synthetic() -> tuple[SentenceCorpus, np.ndarray, np.ndarray]:
    """80 documents of 1-9 sentences of 1-14 tokens; every token id is unique (10 + its index in
    the corpus), so each token tells its document and sentence."""
    rng = np.random.default_rng(0)
    docs, doc_of, sent_of, next_id = [], [], [], 10
    sentence = 0
    for d in range(80):
        doc = []
        for _ in range(rng.integers(1, 10)):
            n = int(rng.integers(1, 15))
            doc.append(list(range(next_id, next_id + n)))
            doc_of += [d] * n
            sent_of += [sentence] * n
            next_id += n
            sentence += 1
        docs.append(doc)
    pad = np.full(10, -1)
    return (
        SentenceCorpus.from_documents(docs, separator=SEP),
        np.r_[pad, doc_of],
        np.r_[pad, sent_of],
    )


def _segments(batch, row: int) -> tuple[np.ndarray, np.ndarray]:
    ids = batch.inputs[row][batch.attention_mask[row]].numpy()
    seps = np.flatnonzero(ids == SEP)
    return ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]


def test_nsp_rows_are_cls_a_sep_b_sep_with_token_types(synthetic) -> None:
    c, _, _ = synthetic
    g = torch.Generator().manual_seed(1)
    batch = nsp_examples(c, 256, 24, g, CLS, SEP, PAD)
    lengths = batch.attention_mask.sum(1)
    assert batch.inputs.shape[1] == int(lengths.max()) <= 24  # padded to the longest row only
    assert (batch.targets == -100).all()
    for row in range(256):
        n = int(lengths[row])
        ids, types = batch.inputs[row].tolist(), batch.token_types[row].tolist()
        a, b = _segments(batch, row)
        assert len(a) >= 1
        assert len(b) >= 1
        assert len(a) + len(b) + 3 == n
        assert [ids[0], ids[len(a) + 1], ids[n - 1]] == [CLS, SEP, SEP]
        assert ids[n:] == [PAD] * (len(ids) - n)
        assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (len(ids) - n)
        assert batch.attention_mask[row].tolist() == [True] * n + [False] * (len(ids) - n)


@pytest.mark.parametrize("max_seq_len", [5, 12, 40, 128])
def test_nsp_pairs_are_consecutive_or_from_another_document(synthetic, max_seq_len: int):
    c, doc_of, sent_of = synthetic
    batch = nsp_examples(c, 400, max_seq_len, torch.Generator().manual_seed(2), CLS, SEP, PAD)
    assert int(batch.attention_mask.sum(1).max()) <= max_seq_len
    for row, label in enumerate(batch.labels.tolist()):
        a, b = _segments(batch, row)
        for segment in (a, b):  # contiguous text of one document
            assert (np.diff(segment) == 1).all()
            assert len(set(doc_of[segment])) == 1
        if label == NOT_NEXT:
            assert doc_of[a[0]] != doc_of[b[0]]
            continue
        assert doc_of[a[0]] == doc_of[b[0]]
        assert b[0] > a[-1]
        if len(a) + len(b) < max_seq_len - 3:  # not truncated: whole, adjacent sentences
            first_a, last_a, first_b = sent_of[a[0]], sent_of[a[-1]], sent_of[b[0]]
            assert first_b == last_a + 1
            assert a[0] == c.sentence(first_a)[0]
            assert a[-1] == c.sentence(last_a)[-1]
            assert b[0] == c.sentence(first_b)[0]
            assert b[-1] == c.sentence(sent_of[b[-1]])[-1]
            assert b[0] == a[-1] + 1


def test_nsp_labels_are_balanced(synthetic) -> None:
    c, _, _ = synthetic
    labels = torch.cat(
        [
            nsp_examples(c, 500, 32, torch.Generator().manual_seed(s), CLS, SEP, PAD).labels
            for s in range(8)
        ]
    )
    assert abs(labels.float().mean().item() - 0.5) < 0.03
    assert set(labels.tolist()) == {IS_NEXT, NOT_NEXT}


def test_truncation_cuts_both_the_front_and_the_back(synthetic) -> None:
    c, _, sent_of = synthetic
    batch = nsp_examples(c, 1000, 8, torch.Generator().manual_seed(3), CLS, SEP, PAD)
    front_cut = back_cut = 0
    for row in range(1000):
        a, _ = _segments(batch, row)
        front_cut += a[0] != c.sentence(sent_of[a[0]])[0]
        back_cut += a[-1] != c.sentence(sent_of[a[-1]])[-1]
    assert front_cut > 50
    assert back_cut > 50


def test_truncated_lengths_match_bert_one_token_at_a_time_loop() -> None:
    for budget in range(2, 21):
        for a_len in range(1, 30):
            for b_len in range(1, 30):
                a, b = a_len, b_len
                while a + b > budget:  # create_pretraining_data.py: truncate_seq_pair
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                got = truncated_lengths(np.array([a_len]), np.array([b_len]), budget)
                assert (int(got[0][0]), int(got[1][0])) == (a, b), (budget, a_len, b_len)


def test_same_seed_same_batch_other_seed_other_batch(synthetic) -> None:
    c, _, _ = synthetic
    one, two, other = (
        nsp_examples(c, 64, 32, torch.Generator().manual_seed(s), CLS, SEP, PAD) for s in (7, 7, 8)
    )
    for field in ("inputs", "token_types", "attention_mask", "labels", "targets"):
        assert torch.equal(getattr(one, field), getattr(two, field))
    assert not torch.equal(one.inputs[:, :8], other.inputs[:, :8])


def test_mlm_only_rows_fill_max_seq_len_from_one_document(synthetic) -> None:
    c, doc_of, sent_of = synthetic
    batch = nsp_examples(c, 300, 20, torch.Generator().manual_seed(4), CLS, SEP, PAD, nsp=False)
    assert batch.labels is None
    assert not batch.token_types.any()
    for row in range(300):
        ids = batch.inputs[row][batch.attention_mask[row]].numpy()
        assert [ids[0], ids[-1]] == [CLS, SEP]
        assert len(ids) <= 20
        body = ids[1:-1]
        assert (np.diff(body) == 1).all()
        assert len(set(doc_of[body])) == 1
        assert body[0] == c.sentence(sent_of[body[0]])[0]  # starts at a sentence start
        doc = doc_of[body[0]]
        doc_last = c.sentence(c.documents[doc + 1] - 1)[-1]
        assert len(ids) == 20 or body[-1] == doc_last  # full, or the document ran out


def test_errors_name_the_problem(synthetic) -> None:
    c, _, _ = synthetic
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match="too short"):
        nsp_examples(c, 2, 4, g, CLS, SEP, PAD)
    with pytest.raises(DataError, match="too short"):
        nsp_examples(c, 2, 2, g, CLS, SEP, PAD, nsp=False)
    lone = SentenceCorpus.from_documents([[[5, 6], [7, 8]]])
    with pytest.raises(DataError, match="two documents"):
        nsp_examples(lone, 2, 16, g, CLS, SEP, PAD)
    single_sentences = SentenceCorpus.from_documents([[[5, 6]], [[7, 8]]])
    with pytest.raises(DataError, match="two or more sentences"):
        nsp_examples(single_sentences, 2, 16, g, CLS, SEP, PAD)
    runs = nsp_examples(lone, 8, 16, g, CLS, SEP, PAD, nsp=False)
    assert runs.inputs.shape == (8, 6)  # [CLS] 5 6 7 8 [SEP] from sentence 0, shorter from 1


def test_nsp_on_real_shards_pairs_consecutive_sentences(tmp_path: Path, wordpiece: Tokenizer):
    write_shards([Document(t, str(i)) for i, t in enumerate(TEXTS)], wordpiece, tmp_path, 0.1)
    c = TokenShards(tmp_path).sentences("train")
    batch = nsp_examples(c, 200, 64, torch.Generator().manual_seed(5), CLS, SEP, PAD)
    documents = _documents(c)
    checked = 0
    for row, label in enumerate(batch.labels.tolist()):
        a, b = (s.tolist() for s in _segments(batch, row))
        if label != IS_NEXT or len(a) + len(b) == 61:
            continue
        # untruncated IsNext: A then B is a run of whole consecutive sentences of one document
        hits = [
            (doc, i, j)
            for doc in documents
            for i in range(len(doc))
            for j in range(i + 1, len(doc))
            if [t for s in doc[i:j] for t in s] == a and doc[j] == b[: len(doc[j])]
        ]
        assert hits, wordpiece.decode(a) + " || " + wordpiece.decode(b)
        checked += 1
    assert checked > 20
