"""Suspicious labels (the confident-learning idea) and per-class outliers, on any feature matrix.

Suspicious labels: out-of-fold probabilities from a plain, well-calibrated linear model (each item is
scored by a model that never saw it). Each class j gets a threshold t_j, the mean probability of j
among the items labelled j (its "self-confidence"). An item labelled i is suspicious when another
class j reaches p_j >= t_j and beats p_i: the model is confidently sure it belongs elsewhere. Ranked by
the margin p_j - p_i, largest first (Northcutt et al., "Confident Learning", 2021, in spirit; we do not
prune or re-weight, we only list).

Outliers: within each class, cosine distance of every (L2-normalised) item to the class mean, turned
into a robust z-score with the median and MAD of that class; z > `z_threshold` is an outlier.
`streamed_class_outliers` gives the same answer in two passes over feature chunks (class sums, then
distances), holding one chunk plus one float per item, for matrices over the memory budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from curata.vectors import l2_rows

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def suspicious_labels(ids: Sequence[str], x: np.ndarray, labels: Sequence[str], *, folds: int = 5, seed: int = 0,
                      C: float = 0.5) -> dict[str, Any]:
    """Rank items whose label disagrees with confident out-of-fold predictions (see module docstring).

    Classes with fewer than 2 items cannot be cross-validated: they are left out and named in `notes`.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray([str(v) for v in labels], dtype=object)
    if len(ids) != len(x) or len(y) != len(x):
        raise ValueError(f"{len(ids)} ids, {len(x)} feature rows and {len(y)} labels: they must match")
    counts = Counter(y)
    notes = [f"class '{c}' has {n} item: too few to cross-validate, left out" for c, n in counts.items() if n < 2]
    keep = np.array([counts[v] >= 2 for v in y], bool)
    classes = sorted({v for v in y[keep]})
    if len(classes) < 2:
        raise ValueError(f"suspicious labels need at least 2 classes with 2+ items; found {len(classes)}")
    x, y, kept_ids = x[keep], y[keep], np.asarray(ids, dtype=object)[keep]
    n_splits = min(folds, min(counts[c] for c in classes))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with threadpool_limits(1, "blas"):  # many small lbfgs problems: one thread each is fastest on 2 cores
        proba = cross_val_predict(model, l2_rows(x), y, cv=StratifiedKFold(n_splits, shuffle=True, random_state=seed),
                                  method="predict_proba")
    col = {c: j for j, c in enumerate(classes)}
    given = np.array([col[v] for v in y])
    self_conf = proba[np.arange(len(y)), given]
    thresholds = np.array([proba[given == j, j].mean() for j in range(len(classes))])
    others = np.where(proba >= thresholds, proba, -1.0)
    others[np.arange(len(y)), given] = -1.0
    best = others.argmax(axis=1)
    flagged = np.flatnonzero((others.max(axis=1) >= 0) & (proba[np.arange(len(y)), best] > self_conf))
    margin = proba[flagged, best[flagged]] - self_conf[flagged]
    rows = [{"id": str(kept_ids[i]), "label": str(y[i]), "suggested": classes[best[i]],
             "label_probability": round(float(self_conf[i]), 4),
             "suggested_probability": round(float(proba[i, best[i]]), 4), "margin": round(float(m), 4)}
            for i, m in sorted(zip(flagged, margin, strict=True), key=lambda t: -t[1])]
    return {"items": len(y), "folds": int(n_splits), "classes": classes,
            "thresholds": {c: round(float(t), 4) for c, t in zip(classes, thresholds, strict=True)},
            "out_of_fold_accuracy": round(float((proba.argmax(axis=1) == given).mean()), 4),
            "suspicious": rows, "notes": notes}


def class_outliers(ids: Sequence[str], x: np.ndarray, labels: Sequence[str], *, z_threshold: float = 3.5,
                   min_class_size: int = 5) -> list[dict[str, Any]]:
    """Items far from their class mean, by robust z-score within the class; largest z first."""
    x = l2_rows(np.asarray(x, np.float32))
    y = np.asarray([str(v) for v in labels], dtype=object)
    out = []
    for c in sorted(set(y)):
        rows = np.flatnonzero(y == c)
        if len(rows) < min_class_size:
            continue
        # In float64, so the streamed variant (sums over chunks) finds the same centre to the last bit.
        total = x[rows].sum(axis=0, dtype=np.float64)
        centre = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)
        out += _robust_outliers([str(ids[r]) for r in rows], c, 1.0 - x[rows] @ centre, z_threshold)
    return sorted(out, key=lambda o: -o["z"])


Chunks = Callable[[], Iterable[tuple[Sequence[str], np.ndarray, Sequence[str]]]]


def streamed_class_outliers(chunks: Chunks, *, z_threshold: float = 3.5, min_class_size: int = 5
                            ) -> list[dict[str, Any]]:
    """`class_outliers` over data read twice in chunks: `chunks()` yields (ids, x, labels) pieces and is
    called once for the class means and once for the distances; only one piece is held at a time, plus
    one distance per item (the median and MAD need every distance of a class)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for _, x, labels in chunks():
        x = l2_rows(np.asarray(x, np.float32))
        y = np.asarray([str(v) for v in labels], dtype=object)
        for c in set(y):
            rows = y == c
            sums[c] = sums.get(c, 0) + x[rows].sum(axis=0, dtype=np.float64)
            counts[c] = counts.get(c, 0) + int(rows.sum())
    centres = {c: (s / max(float(np.linalg.norm(s)), 1e-12)).astype(np.float32)
               for c, s in sums.items() if counts[c] >= min_class_size}
    found: dict[str, tuple[list[str], list[np.ndarray]]] = {c: ([], []) for c in centres}
    for ids, x, labels in chunks():
        x = l2_rows(np.asarray(x, np.float32))
        y = np.asarray([str(v) for v in labels], dtype=object)
        for c in set(y) & set(centres):
            rows = np.flatnonzero(y == c)
            found[c][0].extend(str(ids[r]) for r in rows)
            found[c][1].append(1.0 - x[rows] @ centres[c])
    out = []
    for c in sorted(found):
        class_ids, parts = found[c]
        out += _robust_outliers(class_ids, c, np.concatenate(parts), z_threshold)
    return sorted(out, key=lambda o: -o["z"])


def _robust_outliers(ids: Sequence[str], label: str, distance: np.ndarray, z_threshold: float
                     ) -> list[dict[str, Any]]:
    """The items of one class whose distance to the class mean has a robust z-score above the threshold."""
    median = float(np.median(distance))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(distance - median)))
    if spread <= 1e-9:
        return []  # a class of identical vectors has no outliers
    z = (distance - median) / spread
    return [{"id": str(i), "label": label, "distance": round(float(d), 4), "z": round(float(s), 2)}
            for i, d, s in zip(ids, distance, z, strict=True) if s > z_threshold]
