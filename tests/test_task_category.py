"""Category task: text vs image vs fusion models on synthetic modalities; stacking stays leak-free."""

from __future__ import annotations

import io
from typing import ClassVar

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from curata.evaluate.cv import cross_validate
from curata.evaluate.splits import make_folds
from curata.tasks.category import MODALITY, CategoryTask, LateFusionClassifier
from curata.tasks.estimators import BlockClassifier, MissingBlockError, default_logreg

CLASSES = np.array(["baby", "kitchen", "watches", "decor"])


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # Tiny matrices: BLAS threads only add hand-offs, and the test machine's cores are shared.
    with threadpool_limits(1):
        yield


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tfidf_like(codes: np.ndarray, rng: np.random.Generator, vocabulary: int = 80, words: int = 12) -> np.ndarray:
    """Bag-of-words rows: 70% of an item's words come from its code's 8 topic words, the rest at random."""
    out = np.zeros((len(codes), vocabulary))
    for i, code in enumerate(codes):
        topic = rng.random(words) < 0.7
        picks = np.where(topic, 8 * code + rng.integers(0, 8, words), rng.integers(0, vocabulary, words))
        np.add.at(out[i], picks, 1.0)
    return unit_rows(np.log1p(out))


def embedding(codes: np.ndarray, rng: np.random.Generator, dim: int, spread: float, seed: int) -> np.ndarray:
    centres = np.random.default_rng(seed).normal(0, 1, (codes.max() + 1, dim))
    return unit_rows(centres[codes] + rng.normal(0, spread, (len(codes), dim)))


def products(text_codes: np.ndarray, image_codes: np.ndarray | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Blocks where the text carries `text_codes` and the image `image_codes` (None: pure noise)."""
    rng = np.random.default_rng(seed)
    image = (rng.normal(0, 1, (len(text_codes), 40)) if image_codes is None
             else embedding(image_codes, rng, 40, 0.5, seed=2) * 15)  # CNN features: large, not unit-norm
    return {"tfidf": tfidf_like(text_codes, rng), "minilm": embedding(text_codes, rng, 24, 0.5, seed=1),
            "effnet_lite0": np.abs(image)}


def accuracies(x: dict, y: np.ndarray, models: list[str] | None = None) -> dict[str, float]:
    folds = make_folds(y, n_splits=3, seed=0)
    return {r.name: r.summary["accuracy"]["mean"] for r in CategoryTask().evaluate(x, y, folds, models=models)}


def test_text_models_beat_noise_images():
    y_codes = np.repeat(np.arange(4), 30)
    x = products(y_codes, None)
    acc = accuracies(x, CLASSES[y_codes])
    assert list(acc) == list(MODALITY)  # every candidate, in one table
    for name in ("text_tfidf", "text_minilm", "text_minilm_mlp"):
        assert acc[name] >= 0.9, acc
    for name in ("image_effnet", "image_effnet_mlp"):
        assert acc[name] <= 0.45, acc  # chance is 0.25
    # Fusion must not be dragged down by the useless modality.
    for name in ("early_fusion", "late_fusion_mean", "late_fusion_stacking"):
        assert acc[name] >= 0.85, acc


def test_fusion_beats_each_modality_when_they_know_different_classes():
    # Text tells baby from kitchen but not watches from decor; the image tells watches from decor but
    # not baby from kitchen. Each modality alone tops out near 75%; together they know everything.
    y_codes = np.repeat(np.arange(4), 36)
    x = products(np.minimum(y_codes, 2), np.maximum(y_codes, 1) - 1, seed=3)
    acc = accuracies(x, CLASSES[y_codes])
    best_single = max(acc[m] for m in acc if MODALITY[m] != "text+image")
    assert best_single <= 0.85, acc
    for name in ("early_fusion", "late_fusion_mean", "late_fusion_stacking"):
        assert acc[name] >= 0.9, acc
        assert acc[name] >= best_single + 0.1, acc


class SpyMember(BlockClassifier):
    """A member model that logs the row ids (from a `row_id` block it does not learn from) it fits and
    predicts."""

    log: ClassVar[list[tuple[frozenset, frozenset]]] = []

    def fit(self, x, y):
        super().fit(x, y)
        self.fit_ids_ = frozenset(x["row_id"][:, 0].astype(int).tolist())
        return self

    def predict_proba(self, x):
        SpyMember.log.append((self.fit_ids_, frozenset(x["row_id"][:, 0].astype(int).tolist())))
        return super().predict_proba(x)


class SpyMeta(LogisticRegression):
    rows: ClassVar[list[int]] = []

    def fit(self, x, y, sample_weight=None):
        SpyMeta.rows.append(x.shape[0])
        return super().fit(x, y, sample_weight)


def test_stacking_never_sees_test_rows():
    y_codes = np.repeat(np.arange(4), 15)
    x = products(y_codes, y_codes, seed=4)
    x["row_id"] = np.arange(len(y_codes), dtype=float)[:, None]
    y = CLASSES[y_codes]
    members = (SpyMember(("tfidf",), default_logreg()), SpyMember(("effnet_lite0",), default_logreg()))

    def factory() -> LateFusionClassifier:
        return LateFusionClassifier(members, "stacking", meta=SpyMeta(max_iter=5000), inner_splits=3)

    folds = make_folds(y, n_splits=3, seed=1)
    for train, test in folds:
        SpyMember.log, SpyMeta.rows = [], []
        cross_validate("stacking", factory, x, y, [(train, test)])
        train_ids, test_ids = frozenset(train.tolist()), frozenset(test.tolist())
        assert SpyMeta.rows == [len(train)]  # the meta-model is fitted once, on the training fold's rows
        inner = [(fit, pred) for fit, pred in SpyMember.log if fit != train_ids]
        final = [(fit, pred) for fit, pred in SpyMember.log if fit == train_ids]
        assert len(inner) == 3 * 2  # 3 inner folds x 2 members, each predicting its held-out part
        for fit, pred in inner:
            assert fit < train_ids and pred < train_ids and not fit & pred
        for member in range(2):  # every training row got an out-of-fold probability from each member
            assert frozenset().union(*[pred for _, pred in inner[member::2]]) == train_ids
        # Only the members refitted on the whole training fold ever predict test rows.
        assert all(pred == test_ids for _, pred in final) and len(final) >= 2


def test_each_model_reads_only_its_blocks():
    y_codes = np.repeat(np.arange(4), 10)
    x = products(y_codes, y_codes, seed=5)
    y = CLASSES[y_codes]
    CategoryTask(model="text_tfidf").fit({"tfidf": x["tfidf"]}, y)
    CategoryTask(model="image_effnet").fit({"effnet_lite0": x["effnet_lite0"]}, y)
    with pytest.raises(MissingBlockError, match=r"'effnet_lite0'.*given: minilm, tfidf"):
        CategoryTask(model="early_fusion").fit({"tfidf": x["tfidf"], "minilm": x["minilm"]}, y)
    with pytest.raises(MissingBlockError, match="'minilm', 'effnet_lite0'"):
        CategoryTask(model="late_fusion_stacking").fit({"tfidf": x["tfidf"]}, y)
    with pytest.raises(MissingBlockError, match="'tfidf'"):
        CategoryTask(model="late_fusion_mean").fit({"minilm": x["minilm"], "effnet_lite0": x["effnet_lite0"]}, y)


def test_default_model_fits_predicts_and_survives_a_bundle():
    y_codes = np.repeat(np.arange(4), 20)
    x = products(y_codes, y_codes, seed=6)
    y = CLASSES[y_codes]
    task = CategoryTask().fit(x, y)
    assert task.model == "late_fusion_stacking"
    assert isinstance(task.estimator_, LateFusionClassifier)
    assert list(task.classes_) == sorted(CLASSES)
    fresh = products(y_codes[::5], y_codes[::5], seed=7)
    pred = task.predict(fresh)
    assert (pred == y[::5]).mean() >= 0.9
    proba = task.predict_proba(fresh)
    assert proba.shape == (16, 4) and np.allclose(proba.sum(axis=1), 1)
    buffer = io.BytesIO()
    joblib.dump(task.estimator_, buffer)
    buffer.seek(0)
    assert np.array_equal(joblib.load(buffer).predict(fresh), pred)


def test_bad_inputs_fail_clearly():
    y_codes = np.repeat(np.arange(2), 10)
    x = products(y_codes, y_codes, seed=8)
    with pytest.raises(ValueError, match="only one class"):
        CategoryTask().fit(x, np.array(["baby"] * len(y_codes)))
    task = CategoryTask(model="late_fusion_mean").fit(x, CLASSES[y_codes])
    broken = {k: v[:4].copy() for k, v in x.items()}
    broken["minilm"][2, 3] = np.inf
    with pytest.raises(ValueError, match="'minilm' has NaN or infinite values in 1 row"):
        task.predict(broken)
    with pytest.raises(ValueError, match=r"stacking late fusion needs at least 3 items per class.*'kitchen' \(2\)"):
        CategoryTask().fit(x, np.array(["baby"] * (len(y_codes) - 2) + ["kitchen"] * 2))
    short = {k: v[:4] for k, v in x.items()}
    short["tfidf"] = x["tfidf"][:3]
    with pytest.raises(ValueError, match="rows"):
        task.predict(short)
