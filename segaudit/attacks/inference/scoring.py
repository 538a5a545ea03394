"""Statistics of an attack's success over many updates: ROC AUC, TPR at 1 % FPR, bootstrap and normal
intervals."""
from __future__ import annotations

import math

import numpy as np

from ...errors import SegauditError

MIN_NEGATIVES_AT_1PCT = 100  # a 1 % false-positive rate is one false positive in 100 negative updates


def roc_scores(labels, scores) -> tuple[float, float | None]:
    """``(AUC, TPR at 1 % FPR)`` of ``scores`` (higher = positive) against boolean ``labels``.

    The TPR is None with fewer than :data:`MIN_NEGATIVES_AT_1PCT` negatives: so few cannot resolve a 1 % FPR.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    if labels.all() or not labels.any():
        raise SegauditError("AUC needs both positive and negative updates; give at least 2 updates")
    fpr, tpr, _ = roc_curve(labels, scores)
    resolvable = (~labels).sum() >= MIN_NEGATIVES_AT_1PCT
    return float(roc_auc_score(labels, scores)), float(tpr[fpr <= 0.01].max()) if resolvable else None


def bootstrap_auc(labels, scores, rounds: int = 500, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the AUC (resampling updates)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(len(labels), size=len(labels))
        if labels[idx].all() or not labels[idx].any():
            continue
        values.append(roc_auc_score(labels[idx], scores[idx]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def mean_ci(values) -> tuple[float, tuple[float, float]]:
    """Mean and its normal-approximation 95 % interval."""
    v = np.asarray(values, float)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), (float(v.mean() - half), float(v.mean() + half))
