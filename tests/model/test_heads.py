"""SequenceClassifier: which position it reads, padding invariance, and that it can learn."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model import BERT, GPT
from lmforge.model.heads import SequenceClassifier

V, PAD = 97, 0


def _gpt(pos_emb: str = "learned") -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=V, pos_emb=pos_emb)
    return GPT(cfg)


def _bert() -> BERT:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="bert", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=V)
    return BERT(cfg)


def _right_pad(rows: list[list[int]], width: int, pad: int = PAD) -> tuple[torch.Tensor, ...]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids, mask


ROWS = [[5, 9, 23, 41, 7], [12, 60], [33, 34, 35, 36, 37, 38, 39, 40]]


def test_state_dict_names_body_and_classifier() -> None:
    model = SequenceClassifier(_gpt(), n_classes=3, dropout=0.0)
    prefixes = {name.split(".")[0] for name in model.state_dict()}
    assert prefixes == {"body", "classifier"}
    assert model.classifier.weight.shape == (3, 32)
    assert model.blocks is model.body.blocks


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_classifier_reads_the_last_real_token(pos_emb: str) -> None:
    model = SequenceClassifier(_gpt(pos_emb), n_classes=3, dropout=0.0).eval()
    ids, mask = _right_pad(ROWS, 10)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
        hidden = model.body.encode(ids, attention_mask=mask)
        for i, row in enumerate(ROWS):  # exactly the last real position, read alone
            alone = model(torch.tensor([row]))
            torch.testing.assert_close(logits[i], alone[0], atol=1e-5, rtol=1e-5)
            want = model.classifier(hidden[i, len(row) - 1])
            torch.testing.assert_close(logits[i], want, atol=1e-6, rtol=1e-6)
        other_pad = ids.masked_fill(~mask, 77)  # other pad ids
        torch.testing.assert_close(model(other_pad, attention_mask=mask), logits)
        wider, wider_mask = _right_pad(ROWS, 14)  # more padding
        torch.testing.assert_close(model(wider, attention_mask=wider_mask), logits)
        left = torch.stack([ids[i].roll(10 - len(row)) for i, row in enumerate(ROWS)])
        left_mask = torch.stack([mask[i].roll(10 - len(row)) for i, row in enumerate(ROWS)])
        torch.testing.assert_close(model(left, attention_mask=left_mask), logits)
        changed = ids.clone()
        changed[0, len(ROWS[0]) - 1] = 50  # the last real token of row 0
        new = model(changed, attention_mask=mask)
        assert not torch.allclose(new[0], logits[0])
        torch.testing.assert_close(new[1:], logits[1:])


def test_gpt_classifier_ignores_token_types() -> None:
    model = SequenceClassifier(_gpt(), n_classes=2, dropout=0.0).eval()
    ids, mask = _right_pad(ROWS, 10)
    with torch.no_grad():
        types = torch.ones_like(ids)
        torch.testing.assert_close(model(ids, types, mask), model(ids, None, mask))


def test_bert_classifier_is_padding_invariant_and_reads_the_pooled_cls() -> None:
    model = SequenceClassifier(_bert(), n_classes=4, dropout=0.0).eval()
    ids, mask = _right_pad(ROWS, 10)
    types = (torch.arange(10)[None] >= 2).long() & mask
    with torch.no_grad():
        logits = model(ids, types, mask)
        for i, row in enumerate(ROWS):
            alone = model(torch.tensor([row]), types[i : i + 1, : len(row)])
            torch.testing.assert_close(logits[i], alone[0], atol=1e-5, rtol=1e-5)
        other_pad = ids.masked_fill(~mask, 77)
        torch.testing.assert_close(model(other_pad, types, mask), logits, atol=1e-6, rtol=1e-6)
        pooled = model.body.pool(model.body.encode(ids, types, mask))
        torch.testing.assert_close(logits, model.classifier(pooled))
        changed = ids.clone()
        changed[0, 2] = 50  # any real token of row 0 changes its logits
        assert not torch.allclose(model(changed, types, mask)[0], logits[0])


def test_dropout_is_applied_in_training_only() -> None:
    model = SequenceClassifier(_bert(), n_classes=2, dropout=0.5)
    ids, mask = _right_pad(ROWS, 10)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(ids, None, mask), model(ids, None, mask))
        model.eval()
        torch.testing.assert_close(model(ids, None, mask), model(ids, None, mask))


def test_bad_bodies_and_class_counts_are_refused() -> None:
    with pytest.raises(LMForgeError, match="BERT or a GPT"):
        SequenceClassifier(torch.nn.Linear(3, 3), n_classes=2)
    with pytest.raises(LMForgeError, match="at least 2"):
        SequenceClassifier(_gpt(), n_classes=1)


def _contains_task(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Right-padded rows of 4..15 random tokens; label 1 when token 7 occurs (half the rows)."""
    lengths = torch.randint(4, 16, (n,), generator=generator)
    ids = torch.randint(8, V, (n, 16), generator=generator)
    labels = torch.arange(n) % 2
    where = (torch.rand(n, generator=generator) * (lengths - 1)).long() + 1
    ids[labels == 1, where[labels == 1]] = 7
    ids[:, 0] = 1  # a [CLS]-like start token
    mask = torch.arange(16)[None] < lengths[:, None]
    return ids.masked_fill(~mask, PAD), mask, labels


def test_tiny_bert_fine_tune_learns_a_separable_task() -> None:
    """About 1 s of CPU: 6 epochs of 16 AdamW steps reach 100% on held-out rows."""
    g = torch.Generator().manual_seed(0)
    ids, mask, labels = _contains_task(512, g)
    test_ids, test_mask, test_labels = _contains_task(256, g)
    model = SequenceClassifier(_bert(), n_classes=2, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(6):  # epochs
        for rows in torch.randperm(512, generator=g).split(32):
            loss = F.cross_entropy(model(ids[rows], None, mask[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_ids, None, test_mask).argmax(1) == test_labels).float().mean()
    assert accuracy >= 0.95


@pytest.mark.parametrize("body", [_gpt, _bert])
def test_mean_pooling_averages_the_real_tokens_only(body) -> None:
    model = SequenceClassifier(body(), n_classes=3, dropout=0.0, pooling="mean").eval()
    ids, mask = _right_pad(ROWS, 10)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
        for i, row in enumerate(ROWS):
            alone = torch.tensor([row])
            hidden = model.body.encode(alone)  # (1, len, C), no padding at all
            want = model.classifier(hidden[0].mean(0))
            torch.testing.assert_close(logits[i], want, atol=1e-5, rtol=1e-5)
        other_pad = ids.masked_fill(~mask, 77)
        torch.testing.assert_close(model(other_pad, attention_mask=mask), logits)


def test_pooling_choices_read_different_vectors_and_cls_needs_a_bert() -> None:
    ids, mask = _right_pad(ROWS, 10)
    outputs = {}
    for pooling in ("auto", "cls", "mean", "last"):
        model = SequenceClassifier(_bert(), n_classes=3, dropout=0.0, pooling=pooling).eval()
        with torch.no_grad():
            outputs[pooling] = model.summary(ids, attention_mask=mask)
    torch.testing.assert_close(outputs["auto"], outputs["cls"])
    for a, b in (("cls", "mean"), ("cls", "last"), ("mean", "last")):
        assert not torch.allclose(outputs[a], outputs[b]), (a, b)
    body = _bert()
    with torch.no_grad():  # last: the final state of the last real token ([SEP] in BERT data)
        hidden = body.encode(ids, attention_mask=mask)
    for i, row in enumerate(ROWS):
        torch.testing.assert_close(outputs["last"][i], hidden[i, len(row) - 1])
    with pytest.raises(LMForgeError, match="pooling=cls needs a BERT"):
        SequenceClassifier(_gpt(), n_classes=2, pooling="cls")(ids, attention_mask=mask)
    with pytest.raises(LMForgeError, match="unknown pooling"):
        SequenceClassifier(_gpt(), n_classes=2, pooling="max")(ids, attention_mask=mask)


def test_finetune_pooling_is_validated_in_the_config() -> None:
    from lmforge.config import FinetuneConfig

    assert FinetuneConfig(pooling="mean").pooling == "mean"
    with pytest.raises(LMForgeError, match=r"finetune\.pooling"):
        FinetuneConfig(pooling="max")
