"""Classification metrics against scikit-learn; the text tables; the confusion-matrix plot."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lmforge.data.batches import Batch
from lmforge.evaluate import (
    classification_metrics,
    format_classification_report,
    format_confusion_matrix,
    predict_logits,
)
from lmforge.plots import plot_confusion_matrix

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("n_classes", [2, 3, 5, 9])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_metrics_equal_scikit_learn(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    # a few classes left out of the labels, others out of the predictions, some out of both
    true = rng.choice(max(2, n_classes - 1), size=n)
    pred = np.where(rng.random(n) < 0.6, true, rng.choice(n_classes, size=n))
    pred = np.where(pred == n_classes - 2, 0, pred) if n_classes > 3 else pred
    # one more class than ever occurs: absent from labels and predictions alike
    got = classification_metrics(pred.tolist(), torch.from_numpy(true), n_classes + 1)

    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(true, pred))
    macro = sklearn_metrics.precision_recall_fscore_support(
        true, pred, average="macro", zero_division=0
    )
    assert [got["macro_precision"], got["macro_recall"], got["macro_f1"]] == pytest.approx(
        macro[:3]
    )
    every = range(n_classes + 1)
    per_class = sklearn_metrics.precision_recall_fscore_support(
        true, pred, labels=every, zero_division=0
    )
    for ours, theirs in zip(("precision", "recall", "f1", "support"), per_class, strict=True):
        assert got[ours] == pytest.approx(theirs.tolist())
    assert (
        got["confusion_matrix"]
        == sklearn_metrics.confusion_matrix(true, pred, labels=every).tolist()
    )
    assert got["n"] == n
    json.dumps(got)  # plain Python values only


def test_perfect_and_empty_cases() -> None:
    perfect = classification_metrics([0, 1, 1], [0, 1, 1], 3)
    assert perfect["macro_f1"] == 1.0  # class 2 never occurs, so it does not drag the mean down
    assert perfect["f1"] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        classification_metrics([0, 1], [0, 1, 1], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics([0, 2], [0, 1], 2)


def test_confusion_table_has_true_rows_and_predicted_columns() -> None:
    metrics = classification_metrics([0, 1, 1, 1, 0], [0, 0, 1, 1, 1], 2)
    table = format_confusion_matrix(metrics["confusion_matrix"], ["negative", "pos"])
    assert table.splitlines() == [
        "true \\ predicted negative      pos",
        "negative                1        1",
        "pos                     1        2",
    ]
    report = format_classification_report(metrics, ["negative", "pos"]).splitlines()
    assert report[1].split() == ["negative", "0.5000", "0.5000", "0.5000", "2"]
    assert report[-1].split() == ["accuracy", "0.6000", "5"]


class _Lookup(nn.Module):
    """Class logits = a row of a table chosen by the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.eye(3)[[0, 1, 2, 0, 1]])

    def forward(self, idx, token_types=None, attention_mask=None) -> torch.Tensor:
        return self.table[idx[:, 0]]


def test_predict_logits_keeps_batch_order_and_labels() -> None:
    batches = [
        Batch(torch.tensor([[4, 0], [2, 0]]), torch.zeros(2, 2), labels=torch.tensor([1, 2])),
        Batch(torch.tensor([[0, 0]]), torch.zeros(1, 2), labels=torch.tensor([1])),
    ]
    model = _Lookup()
    logits, labels = predict_logits(model, batches)
    assert logits.argmax(1).tolist() == [1, 2, 0]
    assert labels.tolist() == [1, 2, 1]
    assert model.training  # left as it was found
    unlabelled = [Batch(b.inputs, b.targets) for b in batches]
    assert predict_logits(model, unlabelled)[1] is None


def test_confusion_matrix_plot_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 9]], ["a", "b", "c"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary left behind
