"""Cross-validation shared by every task: fit a fresh model per fold on the training part only.

Everything a model learns — scaling, hyper-parameter search, per-label thresholds, calibration —
lives inside the estimator that `make_model()` returns (a scikit-learn Pipeline, a GridSearchCV, or
our own estimator), so it is refitted on each training fold and the test fold never leaks into it.
Inputs may be one matrix or a dict of named matrices (fusion models need the modalities apart).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curata.evaluate.metrics import classification_metrics, multilabel_metrics, summarise
from curata.evaluate.splits import Fold
from curata.progress import SILENT, Reporter

Features = np.ndarray | dict[str, np.ndarray]


def take(x: Features, index: np.ndarray) -> Features:
    """Rows `index` of a matrix or of every matrix in a dict."""
    if isinstance(x, dict):
        return {k: v[index] for k, v in x.items()}
    return x[index]


@dataclass
class CVResult:
    name: str
    multilabel: bool
    labels: list[str]
    folds: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    overall: dict[str, Any]  # metrics of the pooled out-of-fold predictions (confusion matrix etc.)
    oof_pred: np.ndarray
    oof_scores: np.ndarray | None
    fit_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "multilabel": self.multilabel, "labels": self.labels, "folds": self.folds,
                "summary": self.summary, "overall": self.overall, "fit_seconds": round(self.fit_seconds, 3),
                **self.extra}


def cross_validate(name: str, make_model: Callable[[], Any], x: Features, y: np.ndarray, folds: Sequence[Fold],
                   *, labels: Sequence[str] | None = None, reporter: Reporter = SILENT,
                   train_y: np.ndarray | None = None, train_rows: np.ndarray | None = None) -> CVResult:
    """Evaluate `make_model()` on `folds`. `y` is 1-D (labels) or a 2-D 0/1 matrix (multi-label).

    `train_y`: the targets the models learn from when they are not the `y` they are scored against (a model
    trained on the source's labels, scored on the curated ones); `train_rows`: a mask of the rows that may
    be trained on (never a limit on what is tested)."""
    fit_y = y if train_y is None else train_y
    multilabel = np.ndim(y) == 2
    if labels is None:
        labels = [str(i) for i in range(y.shape[1])] if multilabel else sorted({str(v) for v in y})
    labels = list(labels)
    n = len(y)
    oof_pred = np.zeros(y.shape, bool) if multilabel else np.empty(n, dtype=object)
    oof_scores = np.zeros((n, len(labels)), np.float32)
    tested = np.zeros(n, bool)
    fold_metrics: list[dict[str, Any]] = []
    fit_seconds = 0.0
    abstain = None
    choices: list[str | None] = []  # per fold, what a model that chooses among candidates chose
    advance = reporter.task(f"cross-validating {name}", len(folds))
    for train, test in folds:
        if train_rows is not None:
            train = train[train_rows[train]]
        model = make_model()
        abstain = getattr(model, "unknown_label", None)  # an open-set model's "unknown" answer
        started = time.perf_counter()
        model.fit(take(x, train), fit_y[train])
        fit_seconds += time.perf_counter() - started
        pred = np.asarray(model.predict(take(x, test)))
        scores = _scores(model, take(x, test), labels, multilabel)
        oof_pred[test] = pred
        choices.append(chosen_model(model))
        if scores is not None:
            oof_scores[test] = scores
        tested[test] = True
        if multilabel:
            fold_metrics.append(multilabel_metrics(y[test], pred, scores if scores is not None else pred, labels))
        else:
            fold_metrics.append(classification_metrics(y[test].astype(str), pred.astype(str), labels, abstain))
        advance(1)
    if multilabel:
        overall = multilabel_metrics(y[tested], oof_pred[tested], oof_scores[tested], labels)
    else:
        overall = classification_metrics(y[tested].astype(str), oof_pred[tested].astype(str), labels, abstain)
    result = CVResult(name, multilabel, labels, [_scalars(f) for f in fold_metrics], summarise(fold_metrics),
                      overall, oof_pred, oof_scores, fit_seconds)
    if any(choices):
        result.extra["chosen"] = choices
    return result


def chosen_model(model: Any) -> str | None:
    """What a fitted model that chooses among candidates (classify's `auto`) chose, also behind an open-set
    wrapper; None for any other model."""
    for candidate in (model, getattr(model, "model_", None)):
        if isinstance(getattr(candidate, "chosen_", None), str):
            return candidate.chosen_
    return None


def _scores(model: Any, x: Features, labels: list[str], multilabel: bool = False) -> np.ndarray | None:
    """Class probabilities (or decision scores) aligned to `labels`, when the model has them. Multi-label
    scores are already one column per label (a one-vs-rest model's `classes_` is [0, 1], not the labels)."""
    if not hasattr(model, "predict_proba"):
        return None
    try:
        proba = np.asarray(model.predict_proba(x))
    except (AttributeError, NotImplementedError):
        return None
    classes = [str(c) for c in getattr(model, "classes_", labels)]
    if multilabel or classes == labels:
        return proba
    out = np.zeros((proba.shape[0], len(labels)), np.float32)
    position = {c: i for i, c in enumerate(labels)}
    for j, c in enumerate(classes):
        if c in position:
            out[:, position[c]] = proba[:, j]
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def comparison_table(results: Sequence[CVResult], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: mean ± std of the chosen metrics (defaults by task type)."""
    rows = []
    for r in results:
        keys = metrics or (("micro_f1", "macro_f1", "mean_average_precision") if r.multilabel
                           else ("accuracy", "balanced_accuracy", "macro_f1", "coverage", "accepted_accuracy"))
        row: dict[str, Any] = {"model": r.name}
        for k in keys:
            if k in r.summary:
                row[k] = r.summary[k]["mean"]
                row[f"{k}_std"] = r.summary[k]["std"]
        row["fit_seconds"] = round(r.fit_seconds, 2)
        rows.append(row)
    return rows
