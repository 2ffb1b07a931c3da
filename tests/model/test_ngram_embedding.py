"""model.ngram_buckets: hashed n-gram embeddings added to a BERT's token embedding."""

import pytest
import torch
from safetensors.torch import load_file
from tests.train.test_sessions import BASE_SETS

from lmforge.config import load_config
from lmforge.config.schema import ModelConfig
from lmforge.errors import CheckpointError, LMForgeError
from lmforge.interop.hf_config import export_model_type
from lmforge.jobs import finetune
from lmforge.jobs.prepare import PrepareOptions, prepare
from lmforge.jobs.pretrain import pretrain
from lmforge.model.bert import BERT
from lmforge.rundir import layout


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


def test_a_pretrained_ngram_base_reaches_the_classifier_and_trains(tmp_path) -> None:
    """pretrain -> finetune classify: the n-gram tables are saved, loaded into the classifier's
    body (not re-initialised) and updated by fine-tuning."""
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
        "model.ngram_buckets=64",
    ]
    pretrain(load_config(None, sets), tmp_path / "base")
    table = tmp_path / "train.tsv"
    table.write_text(
        "sentence\tlabel\n"
        + "".join(f"day {i} was {'warm' if i % 2 else 'cold'}\t{i % 2}\n" for i in range(32))
    )
    flags = {"train_file": str(table), "valid_file": str(table)}
    cfg = finetune.resolve(
        "classify",
        tmp_path / "base",
        None,
        ["train.progress=false", "train.batch_size=8", "finetune.epochs=1"],
        flags,
    )
    finetune.finetune_classify(cfg, tmp_path / "clf")
    key = "ngram_emb.tables.0.weight"
    base = load_file(str(tmp_path / "base" / layout.MODEL_FILE))[key]
    tuned = {
        k: v
        for k, v in load_file(str(tmp_path / "clf" / layout.MODEL_FILE)).items()
        if k.endswith(key)
    }
    assert base.shape == (64, 32)
    assert len(tuned) == 1
    tuned_table = next(iter(tuned.values()))
    assert not tuned_table.equal(base)  # fine-tuning moved it
    assert (tuned_table - base).abs().max() < 0.05  # from the base's values, not a fresh draw
