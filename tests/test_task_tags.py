"""The tags task on synthetic multi-label data the tests draw themselves: each tag adds its own direction
to an item's feature vector, on top of noise, with tag frequencies from common to rare."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
import torch

from curata.evaluate.cv import cross_validate, take
from curata.evaluate.metrics import multilabel_metrics
from curata.evaluate.splits import make_folds
from curata.tasks.base import concat_blocks
from curata.tasks.tags import (
    LogRegTagger,
    MLPTagger,
    TagTask,
    ThresholdedTagger,
    best_f1_threshold,
    rank_suggestions,
)

TAGS = [f"tag{j}" for j in range(8)]


def synthetic(n: int = 300, d: int = 64, lo: float = 0.05, hi: float = 0.5, noise: float = 1.5,
              seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Blocks, the 0/1 tag matrix, and the tag directions (rows)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(TAGS))) < np.linspace(lo, hi, len(TAGS))).astype(np.int8)
    directions = rng.normal(size=(len(TAGS), d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = y @ directions + rng.normal(scale=noise / np.sqrt(d), size=(n, d))
    return {"effnet_lite0": x.astype(np.float32)}, y, directions


def small_mlp(**params) -> MLPTagger:
    return MLPTagger(**{"hidden": 64, "max_epochs": 30, **params})


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def fitted_logreg(data):
    x, y, _ = data
    return TagTask("logreg").fit(x, y, labels=TAGS)


def test_both_candidates_learn_tags_under_the_shared_cv(data):
    x, y, _ = data
    folds = make_folds(None, n_items=len(y))
    for result in TagTask(inner_folds=3).evaluate(x, y, folds, labels=TAGS):  # 3 inner folds: test time
        assert result.multilabel and result.labels == TAGS
        assert result.summary["micro_f1"]["mean"] > 0.85, (result.name, result.summary["micro_f1"])
        assert result.overall["mean_average_precision"] > 0.9
        # Scores come back aligned with the tag names (no classes_ mismatch zeroing them).
        assert result.oof_scores.max() > 0.9


def test_thresholds_are_per_label_and_beat_a_fixed_half_on_imbalanced_tags():
    # Rare tags (3% .. 20%) and weak signal: calibrated-ish probabilities of rare tags rarely reach 0.5.
    x, y, _ = synthetic(lo=0.03, hi=0.2, noise=2.5)
    folds = make_folds(None, n_items=len(y))
    result = cross_validate("logreg", TagTask().candidates()["logreg"], x, y, folds, labels=TAGS)
    fixed = multilabel_metrics(y, result.oof_scores >= 0.5, result.oof_scores, TAGS)
    assert result.overall["micro_f1"] > fixed["micro_f1"] + 0.02
    assert result.overall["macro_f1"] > fixed["macro_f1"] + 0.05
    model = ThresholdedTagger(LogRegTagger()).fit(x, y)
    assert model.thresholds_.shape == (len(TAGS),)
    assert len(np.unique(np.round(model.thresholds_, 3))) >= 4
    assert model.threshold_source_ == ["label"] * len(TAGS)
    assert (model.thresholds_ < 0.5).sum() >= 4  # rare tags need a lower cut-off
    assert np.array_equal(model.predict(x), (model.predict_proba(x) >= model.thresholds_).astype(np.int8))


def test_best_f1_threshold():
    assert best_f1_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0])) == pytest.approx((0.55, 1.0))
    # Tied scores are kept or dropped together: keeping both (F1 2/3) beats keeping none.
    t, f1 = best_f1_threshold(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0]))
    assert t == pytest.approx(0.3) and f1 == pytest.approx(2 / 3)
    assert best_f1_threshold(np.array([0.2, 0.4]), np.array([0, 0])) == (0.5, 0.0)
    # Every positive tied at 0 with the negatives (ridge clips to [0, 1]): predicting the label for every
    # item would "win" with F1 0.006; it is predicted for none instead.
    scores, y = np.zeros(1003), np.r_[np.zeros(1000), np.ones(3)]
    t, f1 = best_f1_threshold(scores, y)
    assert f1 == 0.0 and not (scores >= t).any()
    # A label on most items may still be predicted for all when the scores cannot separate them.
    t, f1 = best_f1_threshold(np.zeros(10), np.r_[np.ones(7), np.zeros(3)])
    assert (np.zeros(10) >= t).all() and f1 == pytest.approx(14 / 17)


# Leakage: record every row each model sees, identified by its feature vector. ------------------------

EVENTS: list[tuple[str, frozenset[int]]] = []
ROW_ID: dict[bytes, int] = {}


def _ids(matrix: np.ndarray) -> frozenset[int]:
    return frozenset(ROW_ID[row.tobytes()] for row in np.asarray(matrix, np.float32))


class RecordingLogReg(LogRegTagger):
    def fit(self, x, y):
        EVENTS.append(("base-fit", _ids(x)))
        return super().fit(x, y)

    def predict_proba(self, x):
        EVENTS.append(("base-score", _ids(x)))
        return super().predict_proba(x)


class RecordingTagger(ThresholdedTagger):
    def fit(self, x, y):
        EVENTS.append(("fit", _ids(concat_blocks(x))))
        super().fit(x, y)
        EVENTS.append(("fitted", frozenset()))
        return self


def test_threshold_tuning_never_sees_the_outer_test_fold(data):
    x, y, _ = data
    ROW_ID.clear()
    ROW_ID.update({row.tobytes(): i for i, row in enumerate(concat_blocks(x))})
    EVENTS.clear()
    folds = make_folds(None, n_items=len(y))
    cross_validate("recording", lambda: RecordingTagger(RecordingLogReg(), inner_folds=3), x, y, folds)
    # Split the event log per outer fold: fit(train) ... fitted, then scoring of the test rows.
    starts = [i for i, (kind, _) in enumerate(EVENTS) if kind == "fit"]
    assert len(starts) == len(folds)
    for (train, test), start, end in zip(folds, starts, [*starts[1:], len(EVENTS)], strict=True):
        train, test = frozenset(train.tolist()), frozenset(test.tolist())
        block = EVENTS[start:end]
        assert block[0][1] == train
        done = next(i for i, (kind, _) in enumerate(block) if kind == "fitted")
        inside = block[1:done]
        # Inner folds + final refit: every row any base model saw while `fit` ran is a training row.
        assert all(rows <= train for _, rows in inside)
        inner_scored = [rows for kind, rows in inside if kind == "base-score"]
        assert len(inner_scored) == 3  # 3 inner folds, each scoring its held-out training rows once
        assert frozenset().union(*inner_scored) == train and sum(map(len, inner_scored)) == len(train)
        assert [kind for kind, _ in inside].count("base-fit") == 4  # 3 inner models + the refit
        # The outer test rows are only ever scored, after fitting is over.
        assert all(kind == "base-score" and rows == test for kind, rows in block[done + 1:])


# Suggestions --------------------------------------------------------------------------------------


def test_suggest_returns_the_missing_tag_first_and_never_a_present_one(data, fitted_logreg):
    _, _, directions = data
    task = fitted_logreg
    # An unmistakable item: tags 1 and 6 (both rare-ish) and nothing else; it already has tag1.
    row = {"effnet_lite0": (directions[1] + directions[6]).astype(np.float32)}
    suggestions = task.suggest(row, ["tag1"])
    assert suggestions and suggestions[0][0] == "tag6"
    assert all(tag != "tag1" for tag, _ in suggestions)
    everything = task.suggest(row, ["tag1", "tag6", "not-a-known-tag"], top_k=20, include_below=True)
    assert sorted(tag for tag, _ in everything) == sorted(set(TAGS) - {"tag1", "tag6"})
    thresholds = task.thresholds
    ratios = [score / thresholds[tag] for tag, score in everything]
    assert ratios == sorted(ratios, reverse=True)  # default ranking: score relative to the tag's threshold
    by_score = task.suggest(row, ["tag1"], top_k=20, include_below=True, rank="score")
    assert [s for _, s in by_score] == sorted((s for _, s in by_score), reverse=True)
    above = task.suggest(row, [], top_k=20)
    assert all(score >= thresholds[tag] for tag, score in above)
    assert {"tag1", "tag6"} <= {tag for tag, _ in above}


def test_fill_missing_over_many_items(data, fitted_logreg):
    x, y, _ = data
    present = [[TAGS[j] for j in np.flatnonzero(r)] for r in y]
    filled = fitted_logreg.fill_missing(x, present, top_k=3)
    assert len(filled) == len(y)
    assert all(len(s) <= 3 and not {t for t, _ in s} & set(p) for s, p in zip(filled, present, strict=True))
    # Hide one true tag of every item that has two: it comes back as the first suggestion most of the time.
    rows = [i for i in range(len(y)) if y[i].sum() >= 2]
    hidden = [TAGS[np.flatnonzero(y[i])[-1]] for i in rows]
    shown = [[t for t in present[i] if t != h] for i, h in zip(rows, hidden, strict=True)]
    back = fitted_logreg.fill_missing(take(x, np.array(rows)), shown, top_k=1)
    recovered = np.mean([bool(s) and s[0][0] == h for s, h in zip(back, hidden, strict=True)])
    assert recovered > 0.8
    with pytest.raises(ValueError, match="tag lists"):
        fitted_logreg.fill_missing(x, present[:5])


def test_rank_suggestions_checks_its_ranking_name():
    with pytest.raises(ValueError, match="rank"):
        rank_suggestions(np.array([0.9]), np.array([0.5]), ["a"], [], rank="best")


# Awkward data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [LogRegTagger(), small_mlp()], ids=["logreg", "mlp"])
def test_constant_rare_and_untagged_items_do_not_break_fitting(base):
    x, y, _ = synthetic(n=120)
    y = y[:, :5].copy()
    y[:, 0] = 0  # never present
    y[:, 1] = 1  # on every item
    y[:, 2] = 0
    y[:3, 2] = 1  # three positives: too few for its own threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no convergence or single-class warnings either
        model = ThresholdedTagger(base).fit(x, y)
        pred = model.predict(x)
    assert model.threshold_source_[:3] == ["constant", "constant", "global"]
    assert model.threshold_source_[3:] == ["label", "label"]
    assert not pred[:, 0].any() and pred[:, 1].all()
    assert 0 < model.thresholds_[2] < 1  # the shared micro-F1 threshold
    # Untagged items, and a tag with a single positive: constant in some training folds, absent from
    # some test folds.
    y[:, 1] = x["effnet_lite0"][:, 0] > 0
    y[10:20] = 0
    y[:, 2] = 0
    y[5, 2] = 1
    result = cross_validate("awkward", lambda: ThresholdedTagger(base, inner_folds=3), x, y,
                            make_folds(None, n_items=len(y)))
    assert result.oof_pred.shape == y.shape and np.isfinite(result.oof_scores).all()


def test_tiny_training_sets_fall_back_to_a_default_threshold():
    x, y, _ = synthetic(n=4)
    y[:, :] = 0
    y[0, 0] = y[1, 0] = 1
    model = ThresholdedTagger(LogRegTagger(), inner_folds=3).fit(take(x, np.arange(1)), y[:1])
    assert model.threshold_source_ == ["default"] * len(TAGS)
    assert model.predict(x).shape == y.shape


def test_blocks_are_concatenated_and_checked(data):
    x, y, _ = data
    rng = np.random.default_rng(1)
    blocks = {**x, "minilm": rng.normal(size=(len(y), 16)).astype(np.float32)}
    task = TagTask("logreg").fit(blocks, y, labels=TAGS)
    assert task.predict(blocks).shape == y.shape and task.classes_ == TAGS
    with pytest.raises(ValueError, match="feature blocks"):
        task.predict(x)
    with pytest.raises(ValueError, match="labels"):
        TagTask().fit(x, y, labels=TAGS[:3])
    with pytest.raises(ValueError, match="2-D"):
        ThresholdedTagger().fit(x, y[:, 0])


# The MLP: pickling and determinism ----------------------------------------------------------------


def test_mlp_bundle_round_trip_and_determinism(data, tmp_path):
    x, y, _ = data
    task = TagTask("mlp", labels=TAGS, inner_folds=3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    task.fit(x, y)
    assert torch.equal(torch.rand(3), expected)  # fitting left the caller's torch RNG alone
    assert torch.get_num_threads() == threads
    network = task.estimator_.model_.model
    assert isinstance(network, MLPTagger) and 1 <= network.n_epochs_ <= network.max_epochs
    path = tmp_path / "model.joblib"
    joblib.dump(task, path)
    loaded = joblib.load(path)
    assert getattr(loaded.estimator_.model_.model, "_net", None) is None  # weights travel as arrays
    assert np.array_equal(loaded.predict(x), task.predict(x))
    np.testing.assert_allclose(loaded.predict_proba(x), task.predict_proba(x), rtol=0, atol=1e-6)
    row = {k: v[0] for k, v in x.items()}
    assert loaded.suggest(row, ["tag0"]) == task.suggest(row, ["tag0"])
    # Same seed, same data: the same model, thresholds and scores.
    again = TagTask("mlp", labels=TAGS, inner_folds=3).fit(x, y)
    assert np.array_equal(again.estimator_.thresholds_, task.estimator_.thresholds_)
    assert np.array_equal(again.predict_proba(x), task.predict_proba(x))
    z = concat_blocks(x)
    assert np.array_equal(MLPTagger().fit(z, y).predict_proba(z), network.predict_proba(z))
    assert not np.array_equal(MLPTagger(seed=1).fit(z, y).predict_proba(z), network.predict_proba(z))
    assert (task.predict(x) == y).mean() > 0.95


def test_rare_tags_are_reported_and_a_target_nobody_has_is_named(tmp_path):
    from conftest import write_image
    from curata.collection import Item, items_to_frame
    from curata.features.engine import compute, make_extractor
    from curata.tasks.data import TaskDataError
    from curata.tasks.runner import TrainOptions, prepare
    from curata.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    items = []
    for i in range(12):
        path = write_image(tmp_path / f"{i}.png", color=(20 * i, 100, 200 - 10 * i))
        tags = ["kind=a" if i % 2 else "kind=b"] + (["rare=x"] if i < 2 else []) + (["once=y"] if i == 5 else [])
        items.append(Item(id=f"s/{i}", source="s", collection="c", image=str(path), image_sha256=f"h{i}", tags=tags))
    ws.add_items(items_to_frame(items))
    compute(make_extractor("color_stats"), ws)
    _, _, _, labels, _, protocol = prepare(ws, TrainOptions(task="tags", target="tags", features=["color_stats"],
                                                          folds=2))
    assert labels == ["kind=a", "kind=b"]
    assert protocol["rare_tags"] == {"dropped": 2, "min_count": 5, "items_with_them": 3,
                                     "examples": ["rare=x", "once=y"]}
    with pytest.raises(TaskDataError, match="no item has a label"):
        prepare(ws, TrainOptions(task="colour", target="label", features=["color_stats"], folds=2))
