"""Collection task: open-set detection on synthetic embedding clusters, group-aware folds, bad input."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from curata.evaluate.splits import make_folds
from curata.tasks.collection import UNKNOWN, CollectionTask, OpenSetClassifier
from curata.tasks.estimators import BlockClassifier, Calibrated, default_logreg

DIM = 32


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # Tiny matrices: BLAS threads only add hand-offs, and the test machine's cores are shared.
    with threadpool_limits(1):
        yield


def centres(n: int, seed: int = 0, scale: float = 4.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, (n, DIM))


def blobs(centre_rows: np.ndarray, names: list[str], per_class: int, seed: int) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.vstack([c + rng.normal(0, 1.0, (per_class, DIM)) for c in centre_rows])
    return {"effnet_lite0": x}, np.repeat(names, per_class)


KNOWN = ["cellular", "flow", "voronoi"]


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_new_collection_is_unknown_and_known_ones_are_recognised(model):
    c = centres(4)
    c[3] *= 2.5  # the collection never seen in training lies far from the others
    x, y = blobs(c[:3], KNOWN, per_class=40, seed=1)
    task = CollectionTask(model=model, open_set=True).fit(x, y)
    assert list(task.classes_) == KNOWN  # "unknown" is an answer, never a class
    known_x, known_y = blobs(c[:3], KNOWN, per_class=30, seed=2)
    new_x, _ = blobs(c[3:], ["new"], per_class=30, seed=3)
    known_pred = task.predict(known_x)
    assert (known_pred == known_y).mean() >= 0.85
    assert (known_pred == UNKNOWN).mean() <= 0.15
    assert (task.predict(new_x) == UNKNOWN).mean() >= 0.9
    proba = task.predict_proba(known_x)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(axis=1), 1)
    labels, best = task.predict_open(known_x)
    assert np.array_equal(labels, known_pred) and np.allclose(best, proba.max(axis=1))


def test_probability_alone_misses_a_far_collection_but_catches_ambiguous_items():
    c = centres(4)
    c[3] *= 2.5
    x, y = blobs(c[:3], KNOWN, per_class=40, seed=1)
    base = BlockClassifier(("effnet_lite0",), Calibrated(default_logreg(c=0.1)))
    model = OpenSetClassifier(base, novelty=False).fit(x, y)
    assert 0 < model.threshold_ < 1 and model.distance_threshold_ == np.inf
    far, _ = blobs(c[3:], ["new"], per_class=30, seed=3)
    # Linear models grow more confident away from their data: the far cluster mostly gets a known name.
    assert (model.predict(far) == UNKNOWN).mean() < 0.5
    # Items half-way between two known collections are ambiguous: the probability test rejects them.
    middle = {"effnet_lite0": (c[0] + c[1]) / 2 + np.random.default_rng(4).normal(0, 0.3, (30, DIM))}
    labels, best = model.predict_open(middle)
    assert (labels == UNKNOWN).mean() >= 0.8
    assert np.all(best[labels == UNKNOWN] < model.threshold_)
    known_x, known_y = blobs(c[:3], KNOWN, per_class=30, seed=2)
    assert (model.predict(known_x) == known_y).mean() >= 0.85


def test_thresholds_follow_the_target_recall():
    c = centres(3, seed=5, scale=1.2)  # overlapping collections: some validation answers are wrong
    x, y = blobs(c, KNOWN, per_class=60, seed=6)
    base = BlockClassifier(("effnet_lite0",), Calibrated(default_logreg(c=0.1)))
    strict = OpenSetClassifier(base, target_recall=0.7).fit(x, y)
    lenient = OpenSetClassifier(base, target_recall=0.99).fit(x, y)
    assert strict.n_validation_ == 36  # 20% of each class
    assert strict.threshold_ >= lenient.threshold_
    assert strict.distance_threshold_ <= lenient.distance_threshold_
    fresh_x, _ = blobs(c, KNOWN, per_class=100, seed=7)
    strict_unknown = (strict.predict(fresh_x) == UNKNOWN).mean()
    lenient_unknown = (lenient.predict(fresh_x) == UNKNOWN).mean()
    assert strict_unknown > lenient_unknown
    assert 0.15 <= strict_unknown <= 0.5  # about 1 - 0.7 of the correct answers, plus some wrong ones
    assert lenient_unknown <= 0.1


def test_evaluate_reports_open_set_rates():
    c = centres(3, seed=8)
    x, y = blobs(c, KNOWN, per_class=25, seed=9)
    folds = make_folds(y, n_splits=3, seed=0)
    results = CollectionTask(open_set=True).evaluate(x, y, folds)
    assert [r.name for r in results] == ["logreg", "mlp"]
    for r in results:
        assert r.summary["accuracy"]["mean"] >= 0.85
        coverage, accepted = r.summary["coverage"]["mean"], r.summary["accepted_accuracy"]["mean"]
        assert 0.85 <= coverage < 1.0  # about 5% of right answers are turned into "unknown" by design
        assert accepted >= 0.95 and accepted >= r.summary["accuracy"]["mean"] - 1e-9
        # "unknown" has its own column in the confusion matrix instead of vanishing from it.
        assert r.overall["labels"][-1] == UNKNOWN
        assert sum(row[-1] for row in r.overall["confusion"]) == round((1 - r.overall["coverage"]) * len(y))
    closed = CollectionTask().evaluate(x, y, folds, models=["logreg"])[0]
    assert "coverage" not in closed.summary and UNKNOWN not in closed.overall["labels"]
    assert closed.summary["accuracy"]["mean"] >= results[0].summary["accuracy"]["mean"]


def test_groups_keep_near_duplicates_on_one_side():
    # 48 token families of 4 near-duplicates; the label is a property of the family that the features
    # do not reveal, so only memorising families "works". Grouped folds expose it, plain k-fold does not.
    rng = np.random.default_rng(10)
    families = rng.normal(0, 3.0, (48, 64))  # 64-D: room for a linear model to memorise 48 families
    family_label = np.repeat(KNOWN, 16)
    rng.shuffle(family_label)
    groups = np.repeat(np.arange(48), 4)
    x = {"effnet_lite0": families[groups] + rng.normal(0, 0.05, (len(groups), 64))}
    y = family_label[groups]
    grouped = make_folds(y, n_splits=4, seed=0, groups=groups)
    for train, test in grouped:
        assert not set(groups[train]) & set(groups[test])
    plain = make_folds(y, n_splits=4, seed=0)
    assert any(set(groups[train]) & set(groups[test]) for train, test in plain)
    task = CollectionTask(model="logreg", open_set=False)
    grouped_acc = task.evaluate(x, y, grouped)[0].summary["accuracy"]["mean"]
    plain_acc = task.evaluate(x, y, plain)[0].summary["accuracy"]["mean"]
    assert plain_acc >= 0.9
    assert grouped_acc <= 0.6  # chance is 1/3
    assert plain_acc - grouped_acc >= 0.3


def test_bundle_round_trip_predicts_the_same():
    c = centres(4)
    c[3] *= 2.5
    x, y = blobs(c[:3], KNOWN, per_class=20, seed=11)
    task = CollectionTask(open_set=True).fit(x, y)
    buffer = io.BytesIO()
    joblib.dump(task.estimator_, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    test_x, _ = blobs(c, [*KNOWN, "new"], per_class=5, seed=12)
    assert np.array_equal(loaded.predict(test_x), task.predict(test_x))


def test_bad_inputs_fail_clearly():
    x, y = blobs(centres(2), KNOWN[:2], per_class=10, seed=13)
    with pytest.raises(ValueError, match="only one class"):
        CollectionTask().fit(x, np.array(["flow"] * len(y)))
    with pytest.raises(ValueError, match="'unknown' is a training label"):
        CollectionTask(open_set=True).fit(x, np.where(y == "flow", "unknown", y))
    task = CollectionTask().fit(x, y)
    bad = {"effnet_lite0": x["effnet_lite0"][:3].copy()}
    bad["effnet_lite0"][1, 0] = np.nan
    with pytest.raises(ValueError, match="'effnet_lite0' has NaN"):
        task.predict(bad)
    with pytest.raises(ValueError, match=r"'effnet_lite0'.*given: clip"):
        task.predict({"clip": x["effnet_lite0"]})
    with pytest.raises(ValueError, match="at least 2 items per class"):
        CollectionTask().fit(x, np.array(["flow"] * (len(y) - 1) + ["cellular"]))


def test_a_varied_collection_gets_looser_bounds_than_a_tight_one():
    """One global pair of thresholds rejected much of a varied collection; each class now has its own."""
    c = centres(3, seed=5, scale=8.0)
    rng = np.random.default_rng(6)
    spread = {"tight": 0.5, "medium": 1.0, "varied": 3.0}
    def draw(n: int, seed: int) -> tuple[dict, np.ndarray]:
        r = np.random.default_rng(seed)
        x = np.vstack([c[k] + r.normal(0, s, (n, DIM)) for k, s in enumerate(spread.values())])
        return {"effnet_lite0": x}, np.repeat(list(spread), n)
    x, y = draw(80, 7)
    task = CollectionTask(model="logreg", open_set=True).fit(x, y)
    model = task.estimator_
    assert set(model.class_thresholds_) == set(spread)
    assert model.class_thresholds_["varied"][1] > model.class_thresholds_["tight"][1]  # the distance bound
    test_x, test_y = draw(60, 8)
    pred = task.predict(test_x)
    varied = test_y == "varied"
    rejected = (pred[varied] == UNKNOWN).mean()
    per_class, model.class_thresholds_ = model.class_thresholds_, {}  # the one global pair, as before
    assert rejected <= 0.1 and rejected < (task.predict(test_x)[varied] == UNKNOWN).mean()
    model.class_thresholds_ = per_class
    far_x = {"effnet_lite0": c[0] + rng.normal(0, 0.5, (30, DIM)) + 12.0}  # near no class
    assert (task.predict(far_x) == UNKNOWN).mean() >= 0.9
    # What `predict --json` shows for each answer.
    from curata.tasks.runner import _open_set_row

    row = _open_set_row(model.open_details(test_x), 0)
    assert set(row) == {"accepted", "best_class", "probability", "probability_threshold", "novelty_distance",
                        "distance_threshold"} and row["best_class"] == "tight"
