"""Estimators and input checks shared by the single-label tasks (colour, collection, category, classify).

`BlockClassifier` picks named feature blocks of a Blocks dict, concatenates them and fits a scikit-learn
model; `TunedSVC`, `MLP` and `Calibrated` adapt their inner folds to the class sizes they are fitted on, so
a task's candidate stays valid on a small training fold. Bundles saved before this module existed pickled
these classes under `curata.tasks.colour`, which still imports them, so old bundles keep loading.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from curata.tasks.base import Blocks, concat_blocks

# --------------------------------------------------------------------------------------------------
# Input checks shared by the single-label tasks
# --------------------------------------------------------------------------------------------------


class MissingBlockError(ValueError):
    """A model was given a Blocks dict without a feature block it needs; the message names it."""


def require_blocks(x: Blocks, names: Sequence[str], who: str) -> dict[str, np.ndarray]:
    """The blocks `names` of `x`, checked: numeric 2-D arrays with the same rows and only finite values.

    Every failure names the block: a missing one (and the command that computes it), a wrong shape,
    a row count that disagrees with the other blocks, NaN/inf values (and the first bad row).
    """
    if not isinstance(x, dict):
        raise TypeError(f"{who} takes a dict of named feature blocks (name -> matrix), got {type(x).__name__}")
    missing = [n for n in names if n not in x]
    if missing:
        given = ", ".join(sorted(x)) or "none"
        raise MissingBlockError(
            f"{who} needs feature block(s) {', '.join(repr(n) for n in missing)}, which the inputs lack "
            f"(given: {given}); compute them with `curata features -e {','.join(missing)}`"
        )
    out: dict[str, np.ndarray] = {}
    rows: tuple[str, int] | None = None
    for name in names:
        block = np.asarray(x[name])
        if block.dtype.kind not in "fiub":
            raise ValueError(f"feature block '{name}' is not numeric (dtype {block.dtype})")
        if block.ndim != 2:
            raise ValueError(f"feature block '{name}' must be a 2-D matrix (items x values), got shape {block.shape}")
        if rows is not None and block.shape[0] != rows[1]:
            raise ValueError(f"feature block '{name}' has {block.shape[0]} rows but '{rows[0]}' has {rows[1]}")
        rows = rows or (name, block.shape[0])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise ValueError(
                f"feature block '{name}' has NaN or infinite values in {int(bad.sum())} row(s) "
                f"(first: row {int(np.argmax(bad))}); recompute the feature or leave those items out"
            )
        out[name] = block
    return out


def check_labels(y: Any, *, min_per_class: int = 1, who: str = "the model") -> np.ndarray:
    """One label per item, no missing label, at least two classes and `min_per_class` items in each."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"a single-label task takes one label per item (a 1-D array), got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("no training items")
    if y.dtype.kind in "OUS":
        missing = [i for i, v in enumerate(y.tolist())
                   if v is None or v == "" or (isinstance(v, float) and math.isnan(v))]
        if missing:
            raise ValueError(f"{len(missing)} item(s) have no label (first: row {missing[0]}); leave them out "
                             "before fitting")
    elif y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(f"{int(np.isnan(y).sum())} item(s) have no label (NaN); leave them out before fitting")
    classes, counts = np.unique(y, return_counts=True)
    values = classes.tolist()  # plain Python values: their repr reads 'red', not np.str_('red')
    if len(values) < 2:
        raise ValueError(f"only one class ({values[0]!r}) in the training labels: a classifier needs at least two")
    small = [(c, int(n)) for c, n in zip(values, counts, strict=True) if n < min_per_class]
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in small[:10])
        raise ValueError(f"{who} needs at least {min_per_class} items per class (it tunes or calibrates on an inner "
                         f"cross-validation); too few: {listed}")
    return y


def fit_inner_cv(model: Any, y: np.ndarray) -> Any:
    """`model` with every inner cross-validation given as a fold count (`cv=3`, e.g. the probe's
    LogisticRegressionCV) cut to the smallest class's size: an outer fold of a small class leaves fewer items
    than that, and a stratified split would fail. A class of one item cannot be split at all: one line."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    folds = {name: v for name, v in model.get_params().items()
             if (name == "cv" or name.endswith("__cv")) and isinstance(v, int) and not isinstance(v, bool)}
    too_many = {name: v for name, v in folds.items() if v > smallest}
    if too_many and smallest < 2:
        raise ValueError("a class has a single training item, and the model tunes on an inner cross-validation: "
                         "add items, use fewer folds (--folds), or drop the class (--min-per-class)")
    return model.set_params(**{name: smallest for name in too_many}) if too_many else model


def inner_folds(y: np.ndarray, max_splits: int, seed: int) -> StratifiedKFold:
    """A seeded stratified k-fold of the training data, with fewer folds when the smallest class is small."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    return StratifiedKFold(n_splits=max(2, min(max_splits, smallest)), shuffle=True, random_state=seed)


def aligned_proba(model: Any, x: Any, classes: np.ndarray) -> np.ndarray:
    """`model.predict_proba(x)` with columns in the order of `classes` (0 for a class it never saw)."""
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    model_classes = list(model.classes_)
    if model_classes == list(classes):
        return proba
    out = np.zeros((proba.shape[0], len(classes)))
    position = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(model_classes):
        out[:, position[c]] = proba[:, j]
    return out


# --------------------------------------------------------------------------------------------------
# Estimators shared by the single-label tasks
# --------------------------------------------------------------------------------------------------


class BlockBalancer(TransformerMixin, BaseEstimator):
    """Standardise every column, then weight each block's columns by sqrt(total width / (blocks x its width)):
    every block then adds the same expected squared distance between two items, whatever its width (a 1280-d
    image embedding would otherwise drown a 384-d text one), and the whole row keeps the scale plain
    standardisation gives it (one block: exactly a StandardScaler), so C and gamma grids mean the same."""

    def __init__(self, widths: tuple[int, ...] = ()):
        self.widths = widths

    def fit(self, x: np.ndarray, y: Any = None) -> BlockBalancer:
        if sum(self.widths) != x.shape[1]:
            raise ValueError(f"block widths {self.widths} do not add up to the {x.shape[1]} columns")
        self.scaler_ = StandardScaler().fit(x)
        total, count = sum(self.widths), len(self.widths)
        self.weights_ = np.concatenate([np.full(w, np.sqrt(total / (count * w))) for w in self.widths])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.scaler_.transform(x) * self.weights_


class BlockClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier over some named feature blocks of a Blocks dict.

    `fit`/`predict`/`predict_proba` take the Blocks dict, select `blocks` (failing clearly when one
    is missing or holds NaN), put them side by side — raw, or each L2-normalised per row when
    `normalise` (early fusion of embeddings of different scales) — and hand the matrix to a clone of
    `model` (behind a `BlockBalancer` when `balance`). Everything the model learns (scaling, tuning,
    calibration) happens inside that clone.
    """

    def __init__(self, blocks: tuple[str, ...] = (), model: Any = None, normalise: bool = False,
                 balance: bool = False):
        self.blocks = blocks
        self.model = model
        self.normalise = normalise
        self.balance = balance

    def _matrix(self, x: Blocks) -> np.ndarray:
        if not self.blocks:
            raise ValueError("BlockClassifier needs the names of the feature blocks to use (blocks=...)")
        who = f"a model reading {'+'.join(self.blocks)}"
        return concat_blocks(require_blocks(x, self.blocks, who), normalise=self.normalise).astype(np.float64)

    def fit(self, x: Blocks, y: np.ndarray) -> BlockClassifier:
        y = check_labels(y)
        matrix = self._matrix(x)
        if matrix.shape[0] != len(y):
            raise ValueError(f"{matrix.shape[0]} feature rows but {len(y)} labels")
        self.model_ = fit_inner_cv(clone(self.model if self.model is not None else default_logreg()), y)
        if self.balance:  # concat_blocks lays the blocks out in sorted name order
            widths = tuple(int(np.asarray(x[name]).shape[1]) for name in sorted(self.blocks))
            self.model_ = make_pipeline(BlockBalancer(widths), self.model_)
        self.model_.fit(matrix, y)
        self.classes_ = self.model_.classes_
        self.n_fit_rows_ = len(y)
        if hasattr(self.model_, "best_params_"):
            self.best_params_ = self.model_.best_params_
        return self

    def predict(self, x: Blocks) -> np.ndarray:
        return self.model_.predict(self._matrix(x))

    def predict_proba(self, x: Blocks) -> np.ndarray:
        return self.model_.predict_proba(self._matrix(x))


def default_logreg(c: float = 1.0, seed: int = 0) -> Pipeline:
    """Standardised features + multinomial logistic regression, enough iterations to converge."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))


class _WrapsModel(ClassifierMixin, BaseEstimator):
    """An estimator whose `fit` builds `model_`; prediction is the wrapped model's."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model_.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(x)


class TunedSVC(_WrapsModel):
    """StandardScaler + RBF SVC with C and gamma chosen by grid search on an inner stratified k-fold of
    the training data (accuracy), then Platt-scaled probabilities: a sigmoid fitted on cross-validated
    decision values, the model refitted on all the data (what `SVC(probability=True)` did before its
    deprecation). `best_params_` and `inner_score_` say what the search chose and its inner accuracy.

    `gamma_values=None` scales the gamma grid to the data: `gamma_factors` times 1 / (columns x variance) of
    the (scaled) training matrix, scikit-learn's "scale" heuristic, so the grid suits 18 statistics and
    2,000-d embeddings alike (a fixed grid made the SVM on two concatenated 1280-d blocks worse than either
    alone). `scale=False` leaves out the StandardScaler (inputs already scaled, e.g. by a `BlockBalancer`).
    `search_rows`: search the grid on a stratified seeded sample of at most this many training items (an RBF
    SVM's fit grows with the square of the items: on 4,800 items the full search took 131 s of a 145 s
    `classify` fit), then calibrate and fit on all of them."""

    def __init__(self, c_values: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0),
                 gamma_values: tuple[float, ...] | None = (0.001, 0.01, 0.1, 1.0),
                 gamma_factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0), scale: bool = True, inner_splits: int = 5,
                 search_rows: int | None = None, seed: int = 0):
        self.c_values = c_values
        self.gamma_values = gamma_values
        self.gamma_factors = gamma_factors
        self.scale = scale
        self.inner_splits = inner_splits
        self.search_rows = search_rows
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> TunedSVC:
        y = check_labels(y, min_per_class=2, who="the tuned SVM")
        folds = inner_folds(y, self.inner_splits, self.seed)
        steps = [("scale", StandardScaler())] if self.scale else []
        pipe = Pipeline([*steps, ("svc", SVC(kernel="rbf"))])
        gammas = self.gamma_values
        if gammas is None:
            scaled = StandardScaler().fit_transform(x) if self.scale else x
            base = 1.0 / (scaled.shape[1] * max(float(scaled.var()), 1e-12))
            gammas = tuple(f * base for f in self.gamma_factors)
        grid = {"svc__C": list(self.c_values), "svc__gamma": list(gammas)}
        sx, sy = x, y
        if self.search_rows is not None and len(y) > self.search_rows:
            from curata.tasks.data import stratified_sample

            rows = stratified_sample(y, self.search_rows, self.seed, min_per_stratum=2)
            sx, sy = x[rows], y[rows]
        search = GridSearchCV(pipe, grid, cv=inner_folds(sy, self.inner_splits, self.seed), scoring="accuracy",
                              refit=False).fit(sx, sy)
        self.search_items_ = len(sy)
        self.best_params_ = {k.removeprefix("svc__"): v for k, v in search.best_params_.items()}
        self.inner_score_ = float(search.best_score_)
        best = clone(pipe).set_params(**search.best_params_)
        self.model_ = CalibratedClassifierCV(best, method="sigmoid", cv=folds, ensemble=False).fit(x, y)
        self.classes_ = self.model_.classes_
        return self


class MLP(_WrapsModel):
    """StandardScaler + scikit-learn MLPClassifier, trained to suit the data size: below `small` items
    (or with a class of fewer than 10) full-batch L-BFGS for at most `max_iter` steps (Adam's
    mini-batches give a few dozen updates there and stop undertrained); otherwise Adam with early
    stopping on a stratified 10% of the training data."""

    def __init__(self, hidden: tuple[int, ...] = (128,), alpha: float = 1e-3, max_iter: int = 300, small: int = 500,
                 seed: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.small = small
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLP:
        y = check_labels(y)
        counts = np.unique(y, return_counts=True)[1]
        small = len(y) < self.small or counts.min() < 10
        if small:
            mlp = MLPClassifier(self.hidden, solver="lbfgs", alpha=self.alpha, max_iter=self.max_iter,
                                random_state=self.seed)
        else:
            mlp = MLPClassifier(self.hidden, alpha=self.alpha, max_iter=self.max_iter, early_stopping=True,
                                n_iter_no_change=10, random_state=self.seed)
        with warnings.catch_warnings():
            if small:
                # max_iter bounds L-BFGS's work on purpose: stopping there is a form of early stopping.
                warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = make_pipeline(StandardScaler(), mlp).fit(x, y)
        self.classes_ = self.model_.classes_
        return self


class Calibrated(_WrapsModel):
    """`CalibratedClassifierCV` around `model` with inner folds that fit the class sizes: sigmoid (Platt)
    scaling, or isotonic regression once each calibration fold holds about 1000 items (below that
    isotonic overfits, the usual rule of thumb)."""

    def __init__(self, model: Any = None, method: str = "auto", max_splits: int = 3, seed: int = 0):
        self.model = model
        self.method = method
        self.max_splits = max_splits
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> Calibrated:
        y = check_labels(y, min_per_class=2, who="the calibrated model")
        folds = inner_folds(y, self.max_splits, self.seed)
        method = self.method
        if method == "auto":
            method = "isotonic" if len(y) / folds.get_n_splits() >= 1000 else "sigmoid"
        base = self.model if self.model is not None else default_logreg(seed=self.seed)
        self.method_ = method
        self.model_ = CalibratedClassifierCV(clone(base), method=method, cv=folds).fit(x, y)
        self.classes_ = self.model_.classes_
        return self
