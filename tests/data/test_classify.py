"""Classification data: file formats, label maps, encoding layouts, truncation, batching."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.data.classify import (
    EncodedExamples,
    EpochBatches,
    Example,
    build_label_map,
    classification_batches,
    encode_examples,
    label_ids,
    load_label_map,
    read_examples,
    save_label_map,
)
from lmforge.errors import CheckpointError, DataError
from lmforge.tokenizer import EOT, Tokenizer

TEXTS = [
    "a gripping, funny film with a great cast",
    "the plot is dull and the acting is worse",
    "one of the best movies of the year",
    "i would not watch it again, not even for free",
    "the soundtrack is lovely but the story drags",
] * 4


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece(TEXTS, vocab_size=200)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char(TEXTS)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_is_split_on_tabs_only_and_stripped(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "train.tsv",
        'sentence\tlabel\n  "quoted" text, with a comma \t 1 \n\nit\'s "half\t0\n',
    )
    examples = read_examples(path, "sentence", "label")
    assert examples == [
        Example('"quoted" text, with a comma', None, "1"),
        Example("it's \"half", None, "0"),  # an unbalanced quote is text too
    ]


def test_csv_quoting_is_interpreted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "train.csv",
        'label,premise,hypothesis\npos,"a, b ""c""\nsecond line"," h "\nneg,plain,x\n',
    )
    examples = read_examples(path, "premise", "label", pair_column="hypothesis")
    assert examples == [
        Example('a, b "c"\nsecond line', "h", "pos"),
        Example("plain", "x", "neg"),
    ]


def test_jsonl_reads_objects_and_names_a_bad_line(tmp_path: Path) -> None:
    good = _write(
        tmp_path, "dev.jsonl", '{"text": " hi ", "label": 1}\n\n{"text": "yo", "label": "0"}\n'
    )
    assert read_examples(good, "text", "label") == [
        Example("hi", None, "1"),
        Example("yo", None, "0"),
    ]
    bad = _write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0,}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_examples(bad, "text", "label")
    array = _write(tmp_path, "arr.jsonl", '["a", 1]\n')
    with pytest.raises(DataError, match=r"arr\.jsonl:1: expected a JSON object"):
        read_examples(array, "text", "label")
    floats = _write(tmp_path, "f.jsonl", '{"text": "a", "label": 1.5}\n')
    with pytest.raises(DataError, match=r"f\.jsonl:1: a label must be"):
        read_examples(floats, "text", "label")


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown file type '\.txt'; use \.csv, \.tsv or \.jsonl"):
        read_examples(_write(tmp_path, "x.txt", "a\n"), "text", "label")
    with pytest.raises(DataError, match="valid file not found"):
        read_examples(tmp_path / "nope.tsv", "text", "label", split="valid")


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    tsv = _write(tmp_path, "train.tsv", "sentence\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match="no column 'text'; columns found: sentence, label"):
        read_examples(tsv, "text", "label")
    jsonl = _write(tmp_path, "train.jsonl", '{"sentence": "hi", "gold": 1}\n')
    with pytest.raises(DataError, match=r":1: no column 'label'; columns found: sentence, gold"):
        read_examples(jsonl, "sentence", "label")


def test_ragged_rows_and_empty_splits_are_errors(tmp_path: Path) -> None:
    ragged = _write(tmp_path, "r.tsv", "sentence\tlabel\nok\t1\ntoo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"r\.tsv:3: 3 fields where the header has 2"):
        read_examples(ragged, "sentence", "label")
    empty = _write(tmp_path, "dev.tsv", "sentence\tlabel\n\n")
    with pytest.raises(DataError, match=r"the valid split \(.*dev\.tsv\) has no examples"):
        read_examples(empty, "sentence", "label", split="valid")


def test_label_maps_sort_integers_numerically_and_round_trip(tmp_path: Path) -> None:
    numbers = [Example("x", label=name) for name in ("10", "2", "1", "2")]
    assert build_label_map(numbers) == ["1", "2", "10"]
    words = [Example("x", label=name) for name in ("neutral", "entailment", "contradiction")]
    labels = build_label_map(words)
    assert labels == ["contradiction", "entailment", "neutral"]
    assert build_label_map(list(reversed(words))) == labels  # independent of file order
    assert label_ids(words, labels, "train") == [2, 1, 0]
    path = tmp_path / "run" / "labels.json"
    save_label_map(labels, path)
    assert load_label_map(path) == labels
    path.write_text(json.dumps({"labels": ["a", "a"]}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="distinct"):
        load_label_map(path)
    with pytest.raises(DataError, match="at least 2 labels"):
        build_label_map(numbers[:1])


def test_a_dev_label_absent_from_train_is_named() -> None:
    labels = build_label_map([Example("x", label="neg"), Example("y", label="pos")])
    dev = [Example("z", label="pos"), Example("w", label="neutral")]
    with pytest.raises(DataError, match=r"the valid split has label.*'neutral'.*training split"):
        label_ids(dev, labels, "valid")


def test_bert_encoding_matches_the_tokenizer_templates(wordpiece: Tokenizer) -> None:
    a, b = TEXTS[0], TEXTS[1]
    single = encode_examples([Example(a)], wordpiece, "bert", 64)
    assert single.ids == [wordpiece.encode(a, add_special_tokens=True)]
    assert single.token_types == [[0] * len(single.ids[0])]
    assert single.labels is None
    pair = encode_examples([Example(a, b, "1")], wordpiece, "bert", 64, labels=["0", "1"])
    ids, types = wordpiece.encode_pair(a, b)
    assert (pair.ids, pair.token_types, pair.labels) == ([ids], [types], [1])
    assert pair.pad_id == wordpiece.pad_id
    assert pair.truncated == 0


def test_gpt_encoding_ends_with_the_separator(char: Tokenizer) -> None:
    eot = char.special_id(EOT)
    single = encode_examples([Example("abc")], char, "gpt", 16)
    assert single.ids == [[*char.encode("abc"), eot]]
    pair = encode_examples([Example("ab", "cd")], char, "gpt", 16)
    assert pair.ids == [[*char.encode("ab"), eot, *char.encode("cd"), eot]]
    assert pair.token_types == [[0, 0, 0, 1, 1, 1]]
    assert single.pad_id == 0  # a char tokenizer has no [PAD]; masked out anyway


def test_a_bert_needs_the_bert_specials(char: Tokenizer) -> None:
    with pytest.raises(DataError, match=r"lacks \[CLS\], \[SEP\] or \[PAD\].*wordpiece"):
        encode_examples([Example("abc")], char, "bert", 16)


def test_truncation_is_counted_and_respects_max_length(
    wordpiece: Tokenizer, char: Tokenizer
) -> None:
    examples = [
        Example(text) for text in ("a b", "the plot is dull and the acting is worse", "one")
    ]
    encoded = encode_examples(examples, wordpiece, "bert", 6)
    assert [len(row) for row in encoded.ids] == [4, 6, 3]
    assert encoded.ids[1][-1] == wordpiece.sep_id  # cut text, never the closing [SEP]
    assert encoded.truncated == 1
    assert encoded.truncation_note() == "1 of 3 examples truncated to 6 tokens"
    pairs = [Example(TEXTS[0], "x"), Example("x", TEXTS[1]), Example("ab", "cd")]
    encoded = encode_examples(pairs, char, "gpt", 12)
    assert [len(row) for row in encoded.ids] == [12, 12, 6]
    assert encoded.ids[1][:2] == [*char.encode("x"), char.eot_id]  # the longer text is cut
    assert encoded.truncated == 2
    assert encode_examples(examples[:1], wordpiece, "bert", 16).truncation_note() is None
    with pytest.raises(DataError, match="too short"):
        encode_examples(examples, wordpiece, "bert", 2)


def _encoded(n: int = 23, seed: int = 0) -> EncodedExamples:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n,), generator=g).tolist()
    ids = [[100 + i] * length for i, length in enumerate(lengths)]  # row i is recognisable
    types = [[0] * length for length in lengths]
    return EncodedExamples(ids, types, [i % 3 for i in range(n)], 0, 16, 0)


def _rows_of(batch) -> list[int]:
    return (batch.inputs[:, 0] - 100).tolist()


def test_dynamic_padding_pads_each_batch_to_its_longest_row() -> None:
    encoded = _encoded()
    batches = list(classification_batches(encoded, 5, torch.Generator().manual_seed(1), True))
    assert [len(b.inputs) for b in batches] == [5, 5, 5, 5, 3]
    seen = []
    for batch in batches:
        rows = _rows_of(batch)
        seen += rows
        lengths = [len(encoded.ids[r]) for r in rows]
        assert batch.inputs.shape[1] == max(lengths)
        assert batch.attention_mask.sum(1).tolist() == lengths
        assert (batch.inputs[~batch.attention_mask] == 0).all()
        assert batch.labels.tolist() == [r % 3 for r in rows]
        assert (batch.targets == -100).all()
    assert sorted(seen) == list(range(len(encoded)))  # each example exactly once


def test_shuffling_is_seeded_and_deterministic() -> None:
    encoded = _encoded()

    def order(seed: int | None) -> list[int]:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        batches = classification_batches(encoded, 4, generator, shuffle=seed is not None)
        return [r for batch in batches for r in _rows_of(batch)]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert order(None) == list(range(len(encoded)))
    with pytest.raises(ValueError, match="Generator"):
        next(classification_batches(encoded, 4, None, shuffle=True))


def test_epoch_batches_depend_on_seed_epoch_and_step_only() -> None:
    encoded = _encoded(n=22)
    source = EpochBatches(encoded, batch_size=5, seed=7)
    assert source.batches_per_epoch == 4  # the last 2 rows of each epoch's order are left out
    epochs = [[r for k in range(4) for r in _rows_of(source(e * 4 + k, 0))] for e in range(3)]
    for rows in epochs:
        assert len(set(rows)) == 20  # no repeats within an epoch
    assert epochs[0] != epochs[1]
    again = EpochBatches(encoded, batch_size=5, seed=7)
    assert [_rows_of(again(s, 0)) for s in (9, 2, 5)] == [_rows_of(source(s, 0)) for s in (9, 2, 5)]
    assert _rows_of(EpochBatches(encoded, 5, seed=8)(0, 0)) != _rows_of(source(0, 0))
    accumulated = EpochBatches(encoded, batch_size=5, seed=7, grad_accum=2)
    assert _rows_of(accumulated(3, 1)) == _rows_of(source(7, 0))
    assert accumulated.steps_for(3) == 6  # 3 epochs × 4 batches / 2 micro-batches per step
    small = EpochBatches(_encoded(n=3), batch_size=5, seed=0)
    assert small.batches_per_epoch == 1
    assert len(small(0, 0).inputs) == 3


def test_length_grouping_pads_less_and_keeps_every_epoch_a_full_shuffle() -> None:
    encoded = _encoded(n=203, seed=3)
    plain = EpochBatches(encoded, batch_size=8, seed=5)
    grouped = EpochBatches(encoded, batch_size=8, seed=5, length_grouping=5)
    E = grouped.batches_per_epoch

    def padding(source: EpochBatches, epoch: int) -> int:
        batches = [source(epoch * E + k, 0) for k in range(E)]
        return sum(int((~b.attention_mask).sum()) for b in batches)

    for epoch in range(3):
        rows = [r for k in range(E) for r in _rows_of(grouped(epoch * E + k, 0))]
        assert len(rows) == len(set(rows)) == E * 8  # every batch full, no row twice
        assert padding(grouped, epoch) < padding(plain, epoch) / 2  # the switch does something
    first = [_rows_of(grouped(k, 0)) for k in range(E)]
    second = [_rows_of(grouped(E + k, 0)) for k in range(E)]
    assert {tuple(sorted(b)) for b in first} != {tuple(sorted(b)) for b in second}
    again = EpochBatches(encoded, batch_size=8, seed=5, length_grouping=5)
    assert [_rows_of(again(s, 0)) for s in (40, 3)] == [_rows_of(grouped(s, 0)) for s in (40, 3)]
    windows = [sorted(len(encoded.ids[r]) for r in b) for b in first]
    assert windows != sorted(windows)  # batches are shuffled, not served shortest first
    small = EpochBatches(_encoded(n=3), batch_size=5, seed=0, length_grouping=4)
    assert sorted(_rows_of(small(0, 0))) == [0, 1, 2]


def test_the_length_grouping_key_reaches_the_training_batches() -> None:
    from lmforge.config import load_config
    from lmforge.data.classify import ClassificationData
    from lmforge.data.sources import classification_sources

    encoded = _encoded(n=203, seed=3)
    data = ClassificationData(["0", "1", "2"], encoded, _encoded(n=9))

    def padding(grouping: int) -> int:
        cfg = load_config(None, ["train.batch_size=8", f"finetune.length_grouping={grouping}"])
        train, _ = classification_sources(cfg, data)
        return sum(int((~train(step, 0).attention_mask).sum()) for step in range(25))

    assert padding(5) < padding(0) / 2


def test_files_to_batches(tmp_path: Path, wordpiece: Tokenizer) -> None:
    rows = "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(TEXTS))
    train = read_examples(
        _write(tmp_path, "train.tsv", "sentence\tlabel\n" + rows), "sentence", "label"
    )
    labels = build_label_map(train)
    encoded = encode_examples(train, wordpiece, "bert", 32, labels)
    batch = next(iter(classification_batches(encoded, 4)))
    assert batch.inputs[:, 0].tolist() == [wordpiece.cls_id] * 4
    assert batch.labels.tolist() == [0, 1, 0, 1]
    assert batch.token_types.sum() == 0
