"""Padding: a sequence's logits must not depend on how much padding its batch gave it."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.model import BERT, GPT


def _gpt(pos_emb: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=97, pos_emb=pos_emb)
    return GPT(cfg).eval()


def _left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = True
    return ids, mask


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_left_padded_rows_match_unpadded(pos_emb: str) -> None:
    model = _gpt(pos_emb)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 97, (n,), generator=g) for n in (11, 4, 7)]
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for i, row in enumerate(rows):
            alone = model(row[None])
            torch.testing.assert_close(batched[i, -len(row) :], alone[0], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(batched).all()  # pad rows attend to themselves, never to nothing


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_cached_decoding_of_padded_batch_matches_full_forward(pos_emb: str) -> None:
    model = _gpt(pos_emb)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 97, (n,), generator=g) for n in (9, 3)]
    ids, mask = _left_pad(rows)
    new = torch.randint(1, 97, (2, 5), generator=g)
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        steps = [model(ids, kv_cache=cache, attention_mask=mask)[:, -1]]
        for t in range(new.shape[1]):
            steps.append(model(new[:, t : t + 1], kv_cache=cache)[:, -1])
        for i, row in enumerate(rows):
            full = model(torch.cat([row, new[i]])[None])[0]  # (len + 5, V)
            expected = full[len(row) - 1 :]
            got = torch.stack([s[i] for s in steps])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_kv_cache_reorder_keeps_the_chosen_rows() -> None:
    model = _gpt("rope")
    ids = torch.randint(1, 97, (3, 6), generator=torch.Generator().manual_seed(3))
    nxt = torch.randint(1, 97, (3, 1), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = model.new_kv_cache(3)
        model(ids, kv_cache=cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        got = model(nxt[[2, 2, 0]], kv_cache=cache)[:, -1]
        full = model(torch.cat([ids, nxt], dim=1))[[2, 2, 0], -1]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def _bert() -> BERT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="bert", n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=97, ln_eps=1e-12
    )
    return BERT(cfg).eval()


def test_bert_logits_do_not_change_when_the_batch_pads_more() -> None:
    model = _bert()
    g = torch.Generator().manual_seed(5)
    seq = torch.randint(1, 97, (1, 8), generator=g)
    types = torch.tensor([[0] * 4 + [1] * 4])
    with torch.no_grad():
        alone = model(seq, types)
        for extra in (1, 7, 16):
            ids = torch.cat([seq, torch.zeros(1, extra, dtype=torch.long)], dim=1)
            ids = torch.cat([ids, torch.randint(1, 97, ids.shape, generator=g)])  # a longer row
            mask = torch.ones_like(ids, dtype=torch.bool)
            mask[0, 8:] = False
            tt = torch.cat([types, torch.zeros(1, extra, dtype=torch.long)], dim=1).repeat(2, 1)
            padded = model(ids, tt, mask)
            torch.testing.assert_close(padded.mlm[0, :8], alone.mlm[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(padded.nsp[0], alone.nsp[0], atol=1e-5, rtol=1e-5)


def test_bert_is_bidirectional_and_uses_segments() -> None:
    model = _bert()
    ids = torch.randint(1, 97, (1, 10), generator=torch.Generator().manual_seed(6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 97
    with torch.no_grad():
        base = model.encode(ids)
        # the first position sees the last
        assert not torch.allclose(model.encode(changed)[0, 0], base[0, 0])
        other_segment = model.encode(ids, token_types=torch.ones_like(ids))
        assert not torch.allclose(other_segment, base)


def test_logits_to_keep_gives_the_last_positions_only() -> None:
    model = _gpt("learned")
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(ids)
        last = model(ids, logits_to_keep=1)
        last3 = model(ids, logits_to_keep=3)
    assert last.shape == (2, 1, 97)
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(last3, full[:, -3:])
