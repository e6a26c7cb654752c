"""Metrics for single-label and multi-label predictions, and their mean ± std over folds."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any],
                           abstain: str | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix.

    `abstain`: the answer of a model that may decline (open-set "unknown"). It counts as an error in every
    score above, gets its own column in the confusion matrix (`labels` then ends with it), and adds
    `coverage` (share of items answered) and `accepted_accuracy` (accuracy on those)."""
    labels = list(labels)
    shown = labels + ([abstain] if abstain is not None and abstain not in labels else [])
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    with warnings.catch_warnings():
        # An abstention is never a true class: balanced accuracy says so, and it is expected here.
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i])} for i, c in enumerate(labels)},
        "confusion": confusion_matrix(y_true, y_pred, labels=shown).tolist(),
        "labels": [str(c) for c in shown],
    }
    if abstain is not None:
        truth, pred = np.asarray(y_true), np.asarray(y_pred)
        answered = pred != abstain
        out["coverage"] = float(answered.mean()) if len(pred) else 0.0
        out["accepted_accuracy"] = float((pred[answered] == truth[answered]).mean()) if answered.any() else 0.0
    return out


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray,
                       labels: Sequence[str]) -> dict[str, Any]:
    """Micro/macro/weighted precision, recall, F1 and mean average precision over labels that occur."""
    y_true = np.asarray(y_true, bool)
    y_pred = np.asarray(y_pred, bool)
    out: dict[str, Any] = {}
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    present = y_true.any(axis=0)
    # Average precision is undefined for a label with no positive item in this fold: leave it out.
    ap = [average_precision_score(y_true[:, j], scores[:, j]) for j in np.flatnonzero(present)]
    out["mean_average_precision"] = float(np.mean(ap)) if ap else 0.0
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_label"] = {str(lab): {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                                   "support": int(s[j])} for j, lab in enumerate(labels)}
    out["exact_match"] = float((y_true == y_pred).all(axis=1).mean())
    return out


def summarise(folds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std over folds of every scalar metric."""
    keys = [k for k, v in folds[0].items() if isinstance(v, int | float)]
    return {k: {"mean": float(np.mean([f[k] for f in folds])), "std": float(np.std([f[k] for f in folds]))}
            for k in keys}
