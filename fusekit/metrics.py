"""Evaluation metrics."""
from __future__ import annotations

import numpy as np

from fusekit.errors import FusekitError


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the EMM paper's eq. 7), with tied scores given average ranks.

    Raises FusekitError when ``labels`` holds only one class.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise FusekitError(f"AUC needs as many scores as labels ({scores.size} vs {labels.size})")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise FusekitError("AUC is undefined when the labels hold a single class; use more rows")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average ranks (1-based) over runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood: binary (``probabilities`` [N] of class 1) or multiclass
    (``probabilities`` [N, K], ``labels`` class indices)."""
    labels = np.asarray(labels).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] > 1:
        picked = p[np.arange(len(labels)), labels.astype(np.int64)]
    else:
        p = p.reshape(-1)
        picked = np.where(labels.astype(bool), p, 1.0 - p)
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows whose most probable class ([N, K]) is the label."""
    return float(np.mean(np.argmax(np.asarray(probabilities), axis=1) == np.asarray(labels).reshape(-1)))


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes present with both signs in ``labels``."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    scores = [roc_auc(labels == k, p[:, k]) for k in range(p.shape[1]) if 0 < int(np.sum(labels == k)) < len(labels)]
    if not scores:
        raise FusekitError("macro AUC is undefined when the labels hold a single class; use more rows")
    return float(np.mean(scores))


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (1 - SSE/SST; 0 when the targets are constant and matched exactly)."""
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    f = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if y.shape != f.shape:
        raise FusekitError(f"regression metrics need as many predictions as targets ({f.size} vs {y.size})")
    err = f - y
    sst = float(np.sum((y - y.mean()) ** 2))
    sse = float(np.sum(err ** 2))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else -np.inf)}
