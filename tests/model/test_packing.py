"""Packed examples: each one's logits equal its logits alone; nothing crosses a boundary."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LMForgeError
from lmforge.model import GPT
from lmforge.model.gpt import packed_positions_and_mask

LENGTHS = [5, 3, 6]  # three examples packed into one row of 16, two padding tokens at the end


def _model(pos_emb: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=41, pos_emb=pos_emb)
    return GPT(cfg).eval()


def _packed() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    examples = [torch.randint(1, 41, (n,), generator=g) for n in LENGTHS]
    ids = torch.cat([*examples, torch.zeros(16 - sum(LENGTHS), dtype=torch.long)])
    segments = torch.cat(
        [torch.full((n,), i + 1) for i, n in enumerate(LENGTHS)]
        + [torch.zeros(2, dtype=torch.long)]
    )
    return ids[None], segments[None], examples


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_packed_logits_equal_each_example_alone(pos_emb: str) -> None:
    model = _model(pos_emb)
    ids, segments, examples = _packed()
    with torch.no_grad():
        packed = model(ids, segments=segments)[0]
        start = 0
        for example in examples:
            alone = model(example[None])[0]
            torch.testing.assert_close(
                packed[start : start + len(example)], alone, atol=1e-5, rtol=1e-5
            )
            start += len(example)


def test_positions_restart_and_the_mask_stays_inside_examples() -> None:
    _, segments, _ = _packed()
    positions, mask = packed_positions_and_mask(segments)
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1]
    m = mask[0, 0]
    assert bool(m[6, 5])
    assert not bool(m[6, 4])
    assert not bool(m[5, 6])  # never the future
    assert not bool(m[14, 13])  # padding sees only itself
    assert bool(m.diagonal().all())


def test_segments_do_not_mix_with_a_cache() -> None:
    model = _model("rope")
    ids, segments, _ = _packed()
    with pytest.raises(LMForgeError, match="packed segments"):
        model(ids, kv_cache=model.new_kv_cache(1), segments=segments)
