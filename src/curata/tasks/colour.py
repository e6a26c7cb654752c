"""Colour classification from the global colour statistics, and a zero-label colour namer.

`ColourTask` learns a colour label (e.g. the `color=<value>` trait of an art collection) from the 18
HSV/Lab/BGR statistics of `curata.features.color` (optionally with the colour histograms). Its
reference model is the one of the art-colour study: standardised features, an RBF SVM whose C and
gamma are chosen by grid search on an inner stratified k-fold, and Platt-scaled probabilities.

`ZeroLabelColourNamer` needs no training at all: it names the dominant colour of each image from its
k-means palette (`palette` feature) in CIEDE2000, and can be scored against the same labels.

This module also holds the small estimators shared by the single-label tasks (colour, collection,
category): `BlockClassifier` (pick named feature blocks, concatenate, fit a scikit-learn model) and
the wrappers that adapt their inner folds to the class sizes they are fitted on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from curata.evaluate.cv import take
from curata.evaluate.metrics import classification_metrics
from curata.features.color import COLOR_STAT_NAMES, ColorHistogram
from curata.tasks.base import Blocks, Task, concat_blocks

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


class BlockClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier over some named feature blocks of a Blocks dict.

    `fit`/`predict`/`predict_proba` take the Blocks dict, select `blocks` (failing clearly when one
    is missing or holds NaN), put them side by side — raw, or each L2-normalised per row when
    `normalise` (early fusion of embeddings of different scales) — and hand the matrix to a clone of
    `model`. Everything the model learns (scaling, tuning, calibration) happens inside that clone.
    """

    def __init__(self, blocks: tuple[str, ...] = (), model: Any = None, normalise: bool = False):
        self.blocks = blocks
        self.model = model
        self.normalise = normalise

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
        self.model_ = clone(self.model if self.model is not None else default_logreg())
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
    deprecation). `best_params_` and `inner_score_` say what the search chose and its inner accuracy."""

    def __init__(self, c_values: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0),
                 gamma_values: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0), inner_splits: int = 5, seed: int = 0):
        self.c_values = c_values
        self.gamma_values = gamma_values
        self.inner_splits = inner_splits
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> TunedSVC:
        y = check_labels(y, min_per_class=2, who="the tuned SVM")
        folds = inner_folds(y, self.inner_splits, self.seed)
        pipe = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf"))])
        grid = {"svc__C": list(self.c_values), "svc__gamma": list(self.gamma_values)}
        search = GridSearchCV(pipe, grid, cv=folds, scoring="accuracy", refit=False).fit(x, y)
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


# --------------------------------------------------------------------------------------------------
# The colour task
# --------------------------------------------------------------------------------------------------


class ColourTask(Task):
    """Predict an item's colour label from its colour statistics (and optionally histograms).

    Candidates: "svm" (the reference model, see `TunedSVC`), "logreg", "mlp", "random_forest".
    `features` picks the blocks, e.g. ("color_stats", "color_hist"); they are concatenated raw (each
    model standardises them itself).
    """

    task = "colour"
    default_features = ("color_stats",)
    default_target = "tag:color"

    def __init__(self, model: str | None = None, features: Sequence[str] | None = None, seed: int = 0):
        self.model = model
        self.features = tuple(features or self.default_features)
        self.seed = seed

    def candidates(self) -> dict[str, Callable[[], Any]]:
        def on_blocks(model: Any) -> Callable[[], BlockClassifier]:
            return partial(BlockClassifier, blocks=self.features, model=model, normalise=False)

        return {
            "svm": on_blocks(TunedSVC(seed=self.seed)),
            "logreg": on_blocks(default_logreg(c=1.0, seed=self.seed)),
            "mlp": on_blocks(MLP(hidden=(64,), alpha=1e-3, max_iter=1000, seed=self.seed)),
            "random_forest": on_blocks(RandomForestClassifier(n_estimators=300, random_state=self.seed)),
        }


def color_feature_names(blocks: dict[str, np.ndarray]) -> list[str]:
    """Column names of the concatenated blocks: the 18 statistics, the histogram bins, else `<block>_<i>`."""
    names: list[str] = []
    hist = ColorHistogram()
    for block in sorted(blocks):  # the layout concat_blocks uses
        width = blocks[block].shape[1]
        if block == "color_stats" and width == len(COLOR_STAT_NAMES):
            names += COLOR_STAT_NAMES
        elif block == "color_hist" and width == hist.dim:
            (hh, hs, hv), (ll, la, lb) = hist.hsv_bins, hist.lab_bins
            names += [f"hsv_h{i}_s{j}_v{k}" for i in range(hh) for j in range(hs) for k in range(hv)]
            names += [f"lab_l{i}_a{j}_b{k}" for i in range(ll) for j in range(la) for k in range(lb)]
        else:
            names += [f"{block}_{i}" for i in range(width)]
    return names


class _MatrixView(BaseEstimator):
    """A fitted Blocks model seen as a model of the concatenated matrix, so that scikit-learn can permute
    its columns: each row is cut back into the named blocks before predicting."""

    def __init__(self, fitted: Any = None, layout: tuple[tuple[str, int], ...] = ()):
        self.fitted = fitted
        self.layout = layout

    def fit(self, x: np.ndarray, y: np.ndarray) -> _MatrixView:  # already fitted; scikit-learn wants the method
        return self

    def _blocks(self, x: np.ndarray) -> Blocks:
        out, start = {}, 0
        for name, width in self.layout:
            out[name] = x[:, start:start + width]
            start += width
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.fitted.predict(self._blocks(x))


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(accuracy_score(y, model.predict(x)))


def permutation_importance_report(task: Task, x: Blocks, y: np.ndarray, feature_names: Sequence[str] | None = None,
                                  *, test_size: float = 0.25, n_repeats: int = 10,
                                  seed: int = 0) -> list[tuple[str, float, float]]:
    """Which colour statistics the task's model relies on: (feature, mean, std) of the drop in held-out
    accuracy when that column is shuffled, largest first.

    The model (the task's chosen candidate) is fitted on a stratified (1 - test_size) part and scored on
    the rest, both fixed by `seed`, so the importances describe generalisation, not memorisation.
    Correlated columns share their importance: shuffling one of two redundant statistics costs little.
    """
    y = check_labels(y)
    features = tuple(getattr(task, "features", None) or task.default_features)
    blocks = require_blocks(x, features, "permutation importance")
    names = list(feature_names) if feature_names is not None else color_feature_names(blocks)
    layout = tuple((name, blocks[name].shape[1]) for name in sorted(blocks))
    width = sum(w for _, w in layout)
    if len(names) != width:
        listed = ", ".join(f"{n}: {w}" for n, w in layout)
        raise ValueError(f"{len(names)} feature names for {width} columns ({listed})")
    stratify = y if np.unique(y, return_counts=True)[1].min() >= 2 else None
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=stratify, random_state=seed)
    model = task._factory()()
    model.fit(take(blocks, train), y[train])
    matrix = concat_blocks(take(blocks, test), normalise=False).astype(np.float64)
    result = permutation_importance(_MatrixView(model, layout), matrix, y[test], scoring=_accuracy,
                                    n_repeats=n_repeats, random_state=seed)
    rows = [(names[j], float(result.importances_mean[j]), float(result.importances_std[j])) for j in range(width)]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


# --------------------------------------------------------------------------------------------------
# Zero-label colour naming
# --------------------------------------------------------------------------------------------------

_ALIASES = {"grey": "gray", "violet": "purple", "turquoise": "teal", "cyan": "teal"}


def normalise_colour_label(label: Any, vocabulary: str = "basic") -> str:
    """Lower case and trimmed; for the basic terms, common other spellings folded ("grey" -> "gray")."""
    text = str(label).strip().lower()
    return _ALIASES.get(text, text) if vocabulary == "basic" else text


class ZeroLabelColourNamer(BaseEstimator):
    """Names the dominant colour of each item from its k-means palette; nothing is learned.

    Input: the `palette` feature (k entries of [L*, a*, b*, share], see `curata.features.palette`).
    Each entry is named in CIEDE2000 with the "basic" vocabulary (12 terms, incl. teal) or the 148
    "css" names; entries with the same name add their shares, and the largest total wins.
    """

    def __init__(self, vocabulary: str = "basic", k: int | None = None, feature: str = "palette"):
        self.vocabulary = vocabulary
        self.k = k
        self.feature = feature

    @property
    def classes_(self) -> np.ndarray:
        from curata.features.colornames import BASIC_COLORS, CSS_COLORS

        return np.array(sorted(BASIC_COLORS if self.vocabulary == "basic" else CSS_COLORS))

    def fit(self, x: Any = None, y: Any = None) -> ZeroLabelColourNamer:
        return self  # nothing to learn; here so that it drops into code that calls fit

    def _vectors(self, x: Blocks | np.ndarray) -> np.ndarray:
        if isinstance(x, dict):
            x = require_blocks(x, (self.feature,), "the zero-label colour namer")[self.feature]
        vectors = np.asarray(x, dtype=np.float64)
        return vectors[None, :] if vectors.ndim == 1 else vectors

    def name(self, palette_vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """Per item, the colour names of its palette with their total shares, largest first."""
        from curata.features.palette import dominant_color_names  # scikit-image, loaded on demand

        if self.vocabulary not in ("basic", "css"):
            raise ValueError(f"unknown colour vocabulary '{self.vocabulary}': use basic or css")
        return [dominant_color_names(v, self.k, self.vocabulary) for v in self._vectors(palette_vectors)]

    def predict(self, x: Blocks | np.ndarray) -> np.ndarray:
        """The top colour name of each item ("" for an empty palette)."""
        return np.array([names[0][0] if names else "" for names in self.name(self._vectors(x))], dtype=object)

    def evaluate_against(self, x: Blocks | np.ndarray, y: Sequence[Any]) -> dict[str, Any]:
        """Accuracy (and per-class metrics) of the top names against colour labels; items without a
        label are left out, labels are compared after `normalise_colour_label`."""
        pred = self.predict(x)
        truth = np.array([None if v is None or v == "" else normalise_colour_label(v, self.vocabulary) for v in y],
                         dtype=object)
        if len(truth) != len(pred):
            raise ValueError(f"{len(pred)} palettes but {len(truth)} labels")
        known = np.array([v is not None for v in truth])
        if not known.any():
            raise ValueError("no item has a colour label to compare with")
        t, p = truth[known].astype(str), pred[known].astype(str)
        labels = sorted(set(t) | set(p))
        out = classification_metrics(t, p, labels)
        out["n"] = int(known.sum())
        out["accuracy"] = float(accuracy_score(t, p))
        return out
