"""GLUE metrics against values computed by hand."""
import math

import pytest

from childtune.run.metrics import compute


def test_accuracy_and_f1_by_hand():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, f1 2/3; accuracy 3/5
    scores = compute(("accuracy", "f1"), preds, labels)
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["combined_score"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_matthews_by_hand():
    preds, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute(("mcc",), preds, labels) == {"mcc": pytest.approx(mcc)}
    assert compute(("mcc",), [1, 1, 1], [1, 0, 1])["mcc"] == 0.0  # majority collapse


def test_pearson_and_spearman_by_hand():
    preds, labels = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    # pearson: centred x=(-1.5,-.5,.5,1.5), y=(-.5,-1.5,1.5,.5); sum xy=3, sum x^2=sum y^2=5 -> 0.6
    scores = compute(("pearson", "spearman"), preds, labels)
    assert scores["pearson"] == pytest.approx(0.6)
    assert scores["spearman"] == pytest.approx(0.6)  # ranks equal the values here
    assert scores["combined_score"] == pytest.approx(0.6)
