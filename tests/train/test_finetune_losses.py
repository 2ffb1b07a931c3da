"""Fine-tuning losses: label smoothing reaches sft and multi-task losses, -100 stays ignored."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import FinetuneConfig, ModelConfig
from lmforge.data.batches import Batch
from lmforge.errors import ConfigError
from lmforge.model import GPT
from lmforge.model.heads import MultiTaskClassifier
from lmforge.train.objectives import multitask_loss, sft_loss


def test_sft_loss_smooths_only_the_completion_targets() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=23)).eval()
    ids = torch.randint(0, 23, (2, 8))
    targets = ids.roll(-1, 1)
    targets[:, :3] = -100  # the prompt
    mask = torch.ones(2, 8, dtype=torch.bool)
    batch = Batch(inputs=ids, targets=targets, attention_mask=mask)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).flatten(0, 1)
        for eps in (0.0, 0.1):
            expected = F.cross_entropy(logits, targets.flatten(), label_smoothing=eps)
            torch.testing.assert_close(sft_loss(model, batch, label_smoothing=eps), expected)
        assert float(sft_loss(model, batch, 0.1)) != pytest.approx(float(sft_loss(model, batch)))


def test_multitask_loss_uses_the_batch_task_head() -> None:
    torch.manual_seed(0)
    body = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=23))
    model = MultiTaskClassifier(body, {"a": 2, "b": 3}, dropout=0.0).eval()
    ids, mask = torch.randint(0, 23, (4, 8)), torch.ones(4, 8, dtype=torch.bool)
    batch = Batch(
        inputs=ids, targets=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1, 2]), task="b"
    )
    with torch.no_grad():
        logits = model(ids, None, mask, "b")
        expected = F.cross_entropy(logits, batch.labels, label_smoothing=0.2)
        torch.testing.assert_close(multitask_loss(model, batch, 0.2), expected)
    assert logits.shape == (4, 3)


def test_label_smoothing_must_be_below_one() -> None:
    with pytest.raises(ConfigError, match="label_smoothing"):
        FinetuneConfig(label_smoothing=1.0)
