"""GLUE metrics with sklearn/scipy (the HF `evaluate` hub metrics fail offline).

Values are fractions (accuracy 0.8, not 80); tables scale them. `combined_score` is the mean
when a task has two metrics, as in the HF GLUE metric."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = {
    "accuracy": lambda preds, labels: float(accuracy_score(labels, preds)),
    "f1": lambda preds, labels: float(f1_score(labels, preds)),
    "mcc": lambda preds, labels: float(matthews_corrcoef(labels, preds)),
    "pearson": lambda preds, labels: float(pearsonr(preds, labels)[0]),
    "spearman": lambda preds, labels: float(spearmanr(preds, labels)[0]),
}


def compute(names, preds, labels) -> dict[str, float]:
    preds, labels = np.asarray(preds), np.asarray(labels)
    scores = {name: METRICS[name](preds, labels) for name in names}
    if len(names) > 1:
        scores["combined_score"] = float(np.mean([scores[n] for n in names]))
    return scores


class NotFinite(RuntimeError):
    """A run's metrics (or trained weights) hold NaN or inf: a failed run, never a result."""


def check_finite(metrics: dict, where: str = "metrics") -> None:
    """Raises NotFinite naming the first NaN/inf value in a nested dict of numbers."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            check_finite(value, f"{where}.{key}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise NotFinite(f"{where}.{key} is {value} (e.g. constant predictions or weights "
                            f"that blew up after the last loss check)")
