"""Colour task: learns hues from colour statistics of generated images, tunes its SVM on training rows
only, explains itself by permutation importance; the zero-label namer names palettes."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from curata.evaluate.cv import cross_validate
from curata.evaluate.splits import make_folds
from curata.features.color import COLOR_STAT_NAMES, color_stats
from curata.features.palette import extract_palette
from curata.tasks.colour import (
    BlockClassifier,
    ColourTask,
    MissingBlockError,
    TunedSVC,
    ZeroLabelColourNamer,
    permutation_importance_report,
)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # Tiny matrices: BLAS threads only add hand-offs, and the test machine's cores are shared.
    with threadpool_limits(1):
        yield


def hsv_image(rng: np.random.Generator, hue: int, sat: int, val: int, noise: float, size: int = 16) -> np.ndarray:
    """An RGB image of one OpenCV-HSV colour (H in 0..179) plus Gaussian pixel noise."""
    hsv = np.empty((size, size, 3), np.uint8)
    hsv[...] = (hue % 180, sat, val)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float64)
    return np.clip(rgb + rng.normal(0, noise, rgb.shape), 0, 255).astype(np.uint8)


def hue_dataset(hues: dict[str, int], per_class: int, seed: int = 0, jitter: int = 5) -> tuple[dict, np.ndarray]:
    """Colour statistics of noisy images whose class is their hue; brightness, saturation and noise vary."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for name, hue in hues.items():
        for _ in range(per_class):
            image = hsv_image(rng, hue + int(rng.integers(-jitter, jitter + 1)), int(rng.integers(120, 256)),
                              int(rng.integers(120, 256)), float(rng.uniform(2, 20)))
            rows.append(color_stats(image))
            labels.append(name)
    return {"color_stats": np.array(rows)}, np.array(labels)


PRIMARY = {"red": 0, "green": 60, "blue": 120, "yellow": 30}


def test_colour_models_separate_hues():
    x, y = hue_dataset(PRIMARY, per_class=20)
    folds = make_folds(y, n_splits=3, seed=0)
    results = ColourTask().evaluate(x, y, folds, models=["svm", "logreg", "mlp", "random_forest"])
    accuracy = {r.name: r.summary["accuracy"]["mean"] for r in results}
    assert all(a >= 0.9 for a in accuracy.values()), accuracy
    # Probabilities come back aligned to the labels for every model.
    for r in results:
        assert r.oof_scores.shape == (len(y), 4)
        assert np.allclose(r.oof_scores.sum(axis=1), 1, atol=1e-4)


def test_fit_predict_and_histogram_features():
    x, y = hue_dataset(PRIMARY, per_class=12, seed=1)
    x["color_hist"] = np.random.default_rng(0).random((len(y), 324))
    task = ColourTask(model="logreg", features=("color_stats", "color_hist")).fit(x, y)
    assert list(task.classes_) == sorted(PRIMARY)
    rng = np.random.default_rng(5)
    fresh = {"color_stats": np.array([color_stats(hsv_image(rng, 120, 230, 200, 5.0))]),
             "color_hist": rng.random((1, 324))}
    assert task.predict(fresh)[0] == "blue"
    # Without the histogram block the model says which block it misses.
    with pytest.raises(MissingBlockError, match="color_hist"):
        task.predict({"color_stats": fresh["color_stats"]})


class RowRecorder:
    """Wraps the SVM candidate; records which rows (by a row-id block) each fit sees."""

    seen: ClassVar[list[np.ndarray]] = []

    def __init__(self):
        self.inner = ColourTask(model="svm")._factory()()

    def fit(self, x, y):
        RowRecorder.seen.append(x["row_id"][:, 0].astype(int))
        self.inner.fit({"color_stats": x["color_stats"]}, y)
        self.classes_ = self.inner.classes_
        return self

    def predict(self, x):
        return self.inner.predict({"color_stats": x["color_stats"]})

    def predict_proba(self, x):
        return self.inner.predict_proba({"color_stats": x["color_stats"]})


def test_svm_grid_search_sees_training_rows_only():
    x, y = hue_dataset(PRIMARY, per_class=15, seed=2)
    x["row_id"] = np.arange(len(y))[:, None].astype(float)
    folds = make_folds(y, n_splits=3, seed=0)
    RowRecorder.seen = []
    fitted: list[RowRecorder] = []

    def factory() -> RowRecorder:
        fitted.append(RowRecorder())
        return fitted[-1]

    result = cross_validate("svm", factory, x, y, folds)
    assert result.summary["accuracy"]["mean"] >= 0.9
    for (train, test), rows, model in zip(folds, RowRecorder.seen, fitted, strict=True):
        assert set(rows) == set(train) and not set(rows) & set(test)
        svm = model.inner.model_
        assert isinstance(svm, TunedSVC)
        assert svm.best_params_["C"] in svm.c_values and svm.best_params_["gamma"] in svm.gamma_values
        assert 0 < svm.inner_score_ <= 1
        # The tuned, calibrated SVC was refitted on exactly the training fold's rows.
        final = svm.model_.calibrated_classifiers_[0].estimator
        assert final.named_steps["svc"].shape_fit_[0] == len(train)
        assert svm.best_params_["C"] == final.named_steps["svc"].C


def test_grid_search_follows_the_data():
    # Two classes that only a very flexible boundary separates (a checkerboard in 2-D) need a large
    # gamma; a linearly separable pair is fine with a small one. The search must find out which.
    rng = np.random.default_rng(3)
    grid = rng.uniform(0, 4, (240, 2))
    checker = np.where((np.floor(grid[:, 0]) + np.floor(grid[:, 1])) % 2 == 0, "a", "b")
    wiggly = TunedSVC().fit(grid, checker)
    line = np.where(grid[:, 0] > 2, "a", "b")
    straight = TunedSVC().fit(grid, line)
    assert wiggly.best_params_["gamma"] > straight.best_params_["gamma"]
    assert wiggly.inner_score_ > 0.8


def test_permutation_importance_ranks_hue_above_noise():
    x, y = hue_dataset({"orange": 12, "yellow": 24}, per_class=40, seed=4, jitter=4)
    x["noise"] = np.random.default_rng(0).normal(size=(len(y), 1))
    task = ColourTask(model="svm", features=("color_stats", "noise"))
    report = permutation_importance_report(task, x, y)
    names = [name for name, _, _ in report]
    assert sorted(names) == sorted([*COLOR_STAT_NAMES, "noise_0"])
    means = [mean for _, mean, _ in report]
    assert means == sorted(means, reverse=True)
    importance = {name: mean for name, mean, _ in report}
    # Orange and yellow differ in hue only: a hue coordinate (HSV hue or Lab a*/b*) leads, noise is useless.
    assert names[0] in {"h_hsv_mean", "a_lab_mean", "b_lab_mean"}
    assert importance[names[0]] > 0.02
    assert importance["noise_0"] <= 0.01
    assert max(importance["h_hsv_mean"], importance["a_lab_mean"]) > importance["noise_0"]


def test_permutation_importance_checks_names():
    x, y = hue_dataset(PRIMARY, per_class=6, seed=5)
    with pytest.raises(ValueError, match="3 feature names for 18 columns"):
        permutation_importance_report(ColourTask(model="logreg"), x, y, ["a", "b", "c"])


def test_bad_inputs_fail_clearly():
    x, y = hue_dataset({"red": 0, "blue": 120}, per_class=6, seed=6)
    with pytest.raises(ValueError, match="only one class"):
        ColourTask(model="logreg").fit(x, np.array(["red"] * len(y)))
    broken = {"color_stats": x["color_stats"].copy()}
    broken["color_stats"][3, 5] = np.nan
    with pytest.raises(ValueError, match=r"'color_stats' has NaN or infinite values in 1 row\(s\) \(first: row 3\)"):
        ColourTask(model="svm").fit(broken, y)
    task = ColourTask(model="logreg").fit(x, y)
    broken["color_stats"][3, 5] = np.inf
    with pytest.raises(ValueError, match="color_stats"):
        task.predict(broken)
    with pytest.raises(MissingBlockError, match=r"'color_stats'.*curata features -e color_stats"):
        task.predict({"palette": np.zeros((2, 20))})
    with pytest.raises(ValueError, match="no label"):
        ColourTask(model="logreg").fit(x, np.array(["red", None] * (len(y) // 2), dtype=object))
    with pytest.raises(ValueError, match="unknown model 'svn'"):
        ColourTask(model="svn").fit(x, y)
    with pytest.raises(ValueError, match="at least 2 items per class"):
        BlockClassifier(("color_stats",), TunedSVC()).fit(x, np.array(["red"] * (len(y) - 1) + ["blue"]))


def palette_of(rng: np.random.Generator, rgb: tuple[int, int, int], noise: float = 6.0) -> np.ndarray:
    image = np.clip(np.array(rgb, float) + rng.normal(0, noise, (24, 24, 3)), 0, 255).astype(np.uint8)
    return extract_palette(image, k=5)


def test_zero_label_namer_names_dominant_colours():
    rng = np.random.default_rng(7)
    red = palette_of(rng, (210, 20, 25))
    # Two-thirds teal, one third white: teal first with about 2/3 of the share.
    split = np.full((30, 30, 3), 250, np.uint8)
    split[:20] = (0, 128, 128)
    mixed = extract_palette(split, k=5)
    namer = ZeroLabelColourNamer()
    names = namer.name(np.stack([red, mixed]))
    assert names[0][0][0] == "red" and names[0][0][1] > 0.9
    assert [n for n, _ in names[1]] == ["teal", "white"]
    assert names[1][0][1] == pytest.approx(2 / 3, abs=0.01)
    assert namer.predict({"palette": red[None, :]})[0] == "red"
    assert ZeroLabelColourNamer(vocabulary="css").predict(mixed)[0] == "teal"
    assert "teal" in namer.classes_ and len(namer.classes_) == 12


def test_zero_label_namer_scored_against_labels():
    rng = np.random.default_rng(8)
    colours = {"red": (200, 20, 20), "blue": (20, 40, 200), "green": (30, 160, 40), "yellow": (240, 220, 30)}
    vectors, labels = [], []
    for name, rgb in colours.items():
        for _ in range(3):
            vectors.append(palette_of(rng, rgb))
            labels.append(name.upper() if name == "red" else name)  # labels are compared case-free
    vectors.append(palette_of(rng, (128, 128, 128)))
    labels.append("grey")  # British spelling of a basic term
    vectors.append(palette_of(rng, (128, 128, 128)))
    labels.append("red")  # a wrong label must count against the namer
    vectors.append(palette_of(rng, (10, 10, 10)))
    labels.append(None)  # unlabelled: left out
    scores = ZeroLabelColourNamer().evaluate_against({"palette": np.array(vectors)}, labels)
    assert scores["n"] == 14
    assert scores["accuracy"] == pytest.approx(13 / 14)
    assert scores["per_class"]["gray"]["precision"] == pytest.approx(0.5)
