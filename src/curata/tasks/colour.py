"""Colour classification from the global colour statistics, and a zero-label colour namer.

`ColourTask` learns a colour label (e.g. the `color=<value>` trait of an art collection) from the 18
HSV/Lab/BGR statistics of `curata.features.color` (optionally with the colour histograms). Its
reference model is the one of the art-colour study: standardised features, an RBF SVM whose C and
gamma are chosen by grid search on an inner stratified k-fold, and Platt-scaled probabilities.

`ZeroLabelColourNamer` needs no training at all: it names the dominant colour of each image from its
k-means palette in CIEDE2000 (the object's, `object_palette`, where computed; else the whole image's,
`palette`), and can be scored against the same labels.

The estimators it shares with the other single-label tasks live in `curata.tasks.estimators`; they are
imported here under their old names too, because bundles saved before the move pickled them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from curata.evaluate.cv import take
from curata.evaluate.metrics import classification_metrics
from curata.features.color import COLOR_STAT_NAMES, ColorHistogram
from curata.tasks.base import Blocks, Task, concat_blocks
from curata.tasks.estimators import (  # noqa: F401  (old bundles unpickle these names from this module)
    MLP,
    BlockClassifier,
    Calibrated,
    MissingBlockError,
    TunedSVC,
    aligned_proba,
    check_labels,
    default_logreg,
    inner_folds,
    require_blocks,
)

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

    Input: the `object_palette` feature (the object's palette, backdrop apart: the names /v1/colours gives, see
    `curata.features.object_palette`) or the whole-image `palette` feature (k entries of [L*, a*, b*, share],
    see `curata.features.palette`). `feature=None` reads `object_palette` from blocks that have it and
    `palette` otherwise; a bare matrix is read by its width (4k + 6 values: an object palette). Each entry is
    named in CIEDE2000 with the "basic" vocabulary (12 terms, incl. teal) or the 148 "css" names; entries
    with the same name add their shares, and the largest total wins (for the object palette, as
    `name_colours` ranks them).
    """

    def __init__(self, vocabulary: str = "basic", k: int | None = None, feature: str | None = None):
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
            # The object's colours where they were computed; the whole image's otherwise.
            feature = self.feature or ("object_palette" if "object_palette" in x else "palette")
            x = require_blocks(x, (feature,), "the zero-label colour namer")[feature]
        vectors = np.asarray(x, dtype=np.float64)
        return vectors[None, :] if vectors.ndim == 1 else vectors

    def _is_object(self, width: int) -> bool:
        from curata.features.object_palette import is_object_palette

        if self.feature is not None:
            return self.feature == "object_palette"
        return is_object_palette(width)  # 4k + 6 values; a palette has 4k

    def name(self, palette_vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """Per item, the colour names of its palette with their total shares, largest first."""
        from curata.features.palette import dominant_color_names  # scikit-image, loaded on demand

        if self.vocabulary not in ("basic", "css"):
            raise ValueError(f"unknown colour vocabulary '{self.vocabulary}': use basic or css")
        vectors = self._vectors(palette_vectors)
        if vectors.shape[1] and self._is_object(vectors.shape[1]):
            from curata.features.object_palette import object_names

            return object_names(vectors, self.vocabulary)  # type: ignore[arg-type]
        return [dominant_color_names(v, self.k, self.vocabulary) for v in vectors]

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
