"""model.ngram_buckets: hashed (or, with model.ngram_min_count, counted) n-gram embeddings
added to a BERT's token embedding."""

from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.train.test_sessions import BASE_SETS

from lmforge.config import load_config
from lmforge.config.schema import ModelConfig
from lmforge.data.shards import TokenShards
from lmforge.errors import CheckpointError, LMForgeError
from lmforge.interop.hf_config import export_model_type
from lmforge.jobs import finetune
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain
from lmforge.model.bert import BERT
from lmforge.model.layers import CountedNgramEmbedding
from lmforge.rundir import layout
from lmforge.rundir.load import read_run_config


def tiny(**overrides: object) -> ModelConfig:
    settings = dict(arch="bert", vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    settings.update(overrides)
    return ModelConfig(**settings)


def test_switch_changes_the_encoding_and_the_parameters() -> None:
    torch.manual_seed(0)
    plain = BERT(tiny()).eval()
    torch.manual_seed(0)
    hashed = BERT(tiny(ngram_buckets=64)).eval()
    assert plain.ngram_emb is None
    assert sum(p.numel() for p in hashed.ngram_emb.parameters()) == 2 * 64 * 16  # orders 2, 3
    hashed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randint(0, 50, (2, 8))
    assert not torch.allclose(plain.encode(x), hashed.encode(x))
    for table in hashed.ngram_emb.tables:
        torch.nn.init.zeros_(table.weight)
    torch.testing.assert_close(plain.encode(x), hashed.encode(x))  # zero tables: the plain BERT


def test_bucket_ids_follow_the_formula() -> None:
    embedding = BERT(tiny(ngram_buckets=97, ngram_n=3)).ngram_emb
    x = torch.tensor([[4, 7, 9]])
    p = embedding.PRIMES
    expected = [
        (5 * p[0]) % 97,  # (x_0 + 1) p_0, x_{-1} read as -1 -> 0
        (8 * p[0] + 5 * p[1]) % 97,
        (10 * p[0] + 8 * p[1]) % 97,
    ]
    assert embedding.bucket_ids(x, 2)[0].tolist() == expected


def test_order_matters_and_context_changes_a_position() -> None:
    """The same token after different neighbours gets a different vector (a bag of tokens
    would not); the same n-gram anywhere gets the same one."""
    embedding = BERT(tiny(ngram_buckets=1024)).ngram_emb
    a = embedding(torch.tensor([[3, 5, 8]]))
    b = embedding(torch.tensor([[4, 5, 8]]))
    assert not torch.allclose(a[0, 1], b[0, 1])
    c = embedding(torch.tensor([[9, 9, 3, 5, 8]]))
    torch.testing.assert_close(a[0, 2], c[0, 4])  # same 3-gram 3 5 8, same vector


def test_right_padding_leaves_real_positions_alone() -> None:
    model = BERT(tiny(ngram_buckets=128)).eval()
    x = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[True] * 4 + [False] * 2])
    short = model.encode(x, attention_mask=torch.ones_like(x, dtype=torch.bool))
    torch.testing.assert_close(short, model.encode(padded, attention_mask=mask)[:, :4])


def test_tables_are_lookups_not_flops() -> None:
    assert BERT(tiny()).flops_per_token() == BERT(tiny(ngram_buckets=256)).flops_per_token()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(ngram_buckets=-1),
        dict(ngram_buckets=8, ngram_n=6),
        dict(ngram_n=1),
        dict(arch="gpt", ngram_buckets=8),
    ],
)
def test_invalid_settings_are_refused(overrides: dict) -> None:
    with pytest.raises(LMForgeError):
        tiny(**overrides)


def test_export_refuses_what_bert_model_cannot_hold() -> None:
    with pytest.raises(CheckpointError, match="ngram_buckets"):
        export_model_type(tiny(ngram_buckets=8))


def _pretrained_base(tmp_path, *model_sets: str):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Day {i} was mild. People walked." for i in range(120)))
    prepare(
        PrepareOptions(
            inputs=[str(corpus)],
            out=tmp_path / "data",
            tokenizer="wordpiece",
            vocab_size=200,
            documents="paragraph",
        )
    )
    sets = [
        *BASE_SETS,
        f"data.dir={tmp_path / 'data'}",
        "model.arch=bert",
        "train.objective=mlm",
        *model_sets,
    ]
    pretrain(load_config(None, sets), tmp_path / "base")
    return tmp_path / "base"


def _classifier(tmp_path, base):
    table = tmp_path / "train.tsv"
    table.write_text(
        "sentence\tlabel\n"
        + "".join(f"day {i} was {'warm' if i % 2 else 'cold'}\t{i % 2}\n" for i in range(32))
    )
    flags = {"train_file": str(table), "valid_file": str(table)}
    cfg = finetune.resolve(
        "classify",
        base,
        None,
        ["train.progress=false", "train.batch_size=8", "finetune.epochs=1"],
        flags,
    )
    finetune.finetune_classify(cfg, tmp_path / "clf")
    return load_file(str(tmp_path / "clf" / layout.MODEL_FILE))


def test_a_pretrained_ngram_base_reaches_the_classifier_and_trains(tmp_path) -> None:
    """pretrain -> finetune classify: the n-gram tables are saved, loaded into the classifier's
    body (not re-initialised) and updated by fine-tuning."""
    base_dir = _pretrained_base(tmp_path, "model.ngram_buckets=64")
    key = "ngram_emb.tables.0.weight"
    base = load_file(str(base_dir / layout.MODEL_FILE))[key]
    tuned = {k: v for k, v in _classifier(tmp_path, base_dir).items() if k.endswith(key)}
    assert base.shape == (64, 32)
    assert len(tuned) == 1
    tuned_table = next(iter(tuned.values()))
    assert not tuned_table.equal(base)  # fine-tuning moved it
    assert (tuned_table - base).abs().max() < 0.05  # from the base's values, not a fresh draw


# ---------------------------------------------------------------- counted (ngram_min_count)


def _counted(rows: int = 6, n: int = 3, vocab: int = 10) -> CountedNgramEmbedding:
    cfg = tiny(vocab_size=vocab, ngram_buckets=rows, ngram_n=n, ngram_min_count=2)
    return BERT(cfg).ngram_emb


def test_counted_codes_follow_the_formula_and_orders_never_share_one() -> None:
    embedding = _counted()
    B = 11  # vocabulary 10, digits x + 1
    x = torch.tensor([[4, 7, 9]])
    assert embedding.ngram_codes(x, 2)[0].tolist() == [
        2 * B**2 + 0 * B + 5,  # x_{-1} before the start: digit 0
        2 * B**2 + 5 * B + 8,
        2 * B**2 + 8 * B + 10,
    ]
    assert embedding.ngram_codes(x, 3)[0, 1].item() == 3 * B**3 + 0 * B**2 + 5 * B + 8
    # "start, 4, 7" as a trigram and "4, 7" as a bigram are different n-grams
    assert embedding.ngram_codes(x, 3)[0, 1] != embedding.ngram_codes(x, 2)[0, 1]


def test_fit_keeps_the_frequent_ngrams_and_sends_the_rest_to_row_zero() -> None:
    embedding = _counted(rows=4, n=3)
    stream = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 4, 5, 6])
    counts: Counter = Counter()  # an independent count: plain tuples
    for n in (2, 3):
        padded = [None] * (n - 1) + stream.tolist()
        counts.update((n, *padded[t : t + n]) for t in range(len(stream)))
    frequent = [g for g, c in counts.most_common() if c >= 2]
    assert embedding.fit([stream], min_count=2) == 4 < len(frequent)  # capped by the rows
    rows = {n: embedding.rows(embedding.ngram_codes(stream, n)) for n in (2, 3)}
    kept = {
        (n, *stream[t - n + 1 : t + 1].tolist())
        for n in (2, 3)
        for t in range(n - 1, len(stream))
        if rows[n][t] > 0
    }
    assert len(kept) == 4
    assert (2, 1, 2) in kept  # seen 3 times: the most frequent
    assert all(counts[g] >= 2 for g in kept)
    assert all(g in kept for g in frequent if counts[g] > min(counts[k] for k in kept))
    assert rows[2][-1] == 0
    assert rows[3][-1] == 0
    same = embedding.rows(embedding.ngram_codes(torch.tensor([[7, 1, 2]]), 2))[0, 2]
    assert same == rows[2][1]  # the same bigram elsewhere: the same row
    assert sorted(embedding.codes.tolist()) == embedding.codes.tolist()


def test_counted_switch_changes_the_module_and_the_encoding() -> None:
    hashed = BERT(tiny(ngram_buckets=8)).ngram_emb
    counted = _counted(rows=8)
    assert type(hashed).__name__ == "NgramEmbedding"
    assert isinstance(counted, CountedNgramEmbedding)
    x = torch.tensor([[1, 2, 3, 1, 2, 3]])
    before = counted(x)
    counted.fit([x[0]], min_count=2)
    assert not torch.allclose(before, counted(x))  # fitted: frequent n-grams get rows of their own
    assert counted.codes.dtype == torch.int64
    assert "codes" in counted.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(ngram_buckets=8, ngram_min_count=-1),
        dict(vocab_size=30000, ngram_buckets=8, ngram_n=5, ngram_min_count=2),  # overflows
    ],
)
def test_invalid_counted_settings_are_refused(overrides: dict) -> None:
    with pytest.raises(LMForgeError, match="ngram"):
        tiny(**overrides)


def test_pretraining_counts_the_train_split_and_the_classifier_keeps_the_vocabulary(
    tmp_path,
) -> None:
    base_dir = _pretrained_base(
        tmp_path, "model.ngram_buckets=40", "model.ngram_min_count=5", "model.ngram_n=2"
    )
    codes = load_file(str(base_dir / layout.MODEL_FILE))["ngram_emb.codes"]
    real = codes[codes != CountedNgramEmbedding.ABSENT]
    assert 0 < len(real) <= 40
    assert torch.all(real[1:] > real[:-1])  # sorted, distinct
    shards = TokenShards(tmp_path / "data")
    tokens = [torch.from_numpy(a.astype(np.int64)) for a in shards.arrays["train"]]
    vocab = read_run_config(base_dir).model.vocab_size
    embedding = CountedNgramEmbedding(
        tiny(vocab_size=vocab, ngram_buckets=40, ngram_n=2, ngram_min_count=5)
    )
    embedding.fit(tokens, min_count=5)
    assert embedding.codes.equal(codes)  # the train split's count, as fit() makes it
    tuned = _classifier(tmp_path, base_dir)
    assert tuned["body.ngram_emb.codes"].equal(codes)  # the classifier reads the base's n-grams
