"""Sliding-window text scoring: every token once, chunking at stride == window, bits per byte."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError, DataError
from lmforge.evaluate import bits_per_byte, score_text, sliding_windows, token_losses
from lmforge.model import GPT

WINDOW = 16


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=WINDOW, vocab_size=53)
    return GPT(cfg).eval()


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 53, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [2, 5, 16, 17, 40, 97])
@pytest.mark.parametrize("stride", [1, 3, 8, 15, 16])
def test_every_target_is_scored_exactly_once(n: int, stride: int) -> None:
    counts = [0] * (n - 1)
    for w in sliding_windows(n, WINDOW, stride):
        assert 0 <= w.begin < w.first <= w.end <= n - 1
        assert w.end - w.begin <= WINDOW
        for target in range(w.first, w.end + 1):
            counts[target - 1] += 1
            if w.begin > 0:  # a later window gives each target window - stride of context
                assert target - w.begin >= WINDOW - stride
    assert counts == [1] * (n - 1)


def test_stride_equal_to_window_is_plain_chunking(model: GPT) -> None:
    ids = _ids(70)
    losses, positions = token_losses(model, ids, WINDOW, WINDOW, batch_size=3)
    expected = []
    with torch.no_grad():
        for begin in range(0, 69, WINDOW):
            chunk = ids[begin : min(begin + WINDOW + 1, 70)]
            logits = model(chunk[None, :-1])[0]
            expected.append(F.cross_entropy(logits, chunk[1:], reduction="none"))
    torch.testing.assert_close(losses, torch.cat(expected), atol=1e-5, rtol=1e-5)
    assert positions.tolist() == [i % WINDOW for i in range(69)]


def test_small_stride_scores_each_target_with_its_window_context(model: GPT) -> None:
    ids, stride = _ids(50, seed=1), 5
    losses, _ = token_losses(model, ids, WINDOW, stride, batch_size=4)
    with torch.no_grad():
        for w in sliding_windows(50, WINDOW, stride):
            for target in range(w.first, w.end + 1):
                logits = model(ids[None, w.begin : target])[0, -1]
                nll = F.cross_entropy(logits[None], ids[target][None])
                torch.testing.assert_close(losses[target - 1], nll, atol=1e-5, rtol=1e-5)
    alone, _ = token_losses(model, ids, WINDOW, stride, batch_size=1)
    torch.testing.assert_close(alone, losses, atol=1e-5, rtol=1e-5)


def test_bits_per_byte_by_hand() -> None:
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)  # 10 bits over 5 bytes
    assert bits_per_byte(math.log(256) * 4, 4) == pytest.approx(8.0)  # uniform over bytes


def test_score_text_relates_loss_tokens_and_bytes(model: GPT) -> None:
    ids = _ids(60, seed=2).tolist()
    score = score_text(model, ids, n_bytes=123, window=WINDOW, stride=4)
    assert score.tokens == 59
    expected_bpb = score.loss * score.tokens / (123 * math.log(2))
    assert score.bits_per_byte == pytest.approx(expected_bpb, rel=1e-9)
    assert score.perplexity == pytest.approx(math.exp(score.loss), rel=1e-9)
    assert len(score.position_loss) == WINDOW
    assert set(score.as_dict()) == {
        "loss",
        "perplexity",
        "bits_per_byte",
        "tokens",
        "bytes",
        "tokens_per_s",
    }


def test_bad_stride_and_empty_text(model: GPT) -> None:
    with pytest.raises(ConfigError, match="stride must be between 1 and the window"):
        sliding_windows(10, WINDOW, 0)
    with pytest.raises(ConfigError, match="stride"):
        sliding_windows(10, WINDOW, WINDOW + 1)
    with pytest.raises(DataError, match="no tokens"):
        score_text(model, [3], n_bytes=1, window=WINDOW)
