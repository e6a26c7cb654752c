"""`classify`: a closed-set classifier for any label, its validated default model, the held-out protocol
(train -> val -> test scored once) and open-set answers as an option — on data the tests build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from conftest import write_colour_table
from curata.evaluate.splits import NotEnoughData, held_out
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import ingest
from curata.tasks.classify import ClassifyTask
from curata.tasks.estimators import BlockBalancer, BlockClassifier, TunedSVC
from curata.tasks.openset import UNKNOWN
from curata.tasks.runner import TrainOptions, run
from curata.workspace import Workspace


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def blobs(centres: np.ndarray, names: list[str], per_class: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    x = np.vstack([c + rng.normal(0, spread, (per_class, centres.shape[1])) for c in centres])
    return {"emb": x}, np.repeat(names, per_class)


def rings(n: int, seed: int):
    """Two concentric rings in 2-D (plus noise dimensions): no linear model separates them."""
    rng = np.random.default_rng(seed)
    radius = np.where(np.arange(n) % 2 == 0, 1.0, 3.0)
    angle = rng.uniform(0, 2 * np.pi, n)
    x = np.c_[radius * np.cos(angle), radius * np.sin(angle)] + rng.normal(0, 0.15, (n, 2))
    return {"emb": np.c_[x, rng.normal(0, 0.1, (n, 3))]}, np.where(radius == 1.0, "inner", "outer")


def test_closed_set_by_default_open_set_on_request():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (4, 16))
    x, y = blobs(centres[:3], ["a", "b", "c"], 40, seed=1)
    far, _ = blobs(centres[3:] * 3, ["new"], 30, seed=2)
    closed = ClassifyTask(model="logreg", features=["emb"]).fit(x, y)
    assert set(closed.predict(far)) <= {"a", "b", "c"}  # a closed problem never loses an answer to "unknown"
    opened = ClassifyTask(model="logreg", features=["emb"], open_set=True).fit(x, y)
    assert (opened.predict(far) == UNKNOWN).mean() >= 0.9
    test_x, test_y = blobs(centres[:3], ["a", "b", "c"], 30, seed=3)
    assert (closed.predict(test_x) == test_y).mean() >= 0.95


def test_auto_chooses_by_validation_inside_the_fit():
    x, y = rings(240, seed=4)
    task = ClassifyTask(features=["emb"]).fit(x, y)  # "auto", the default model
    choice = task.estimator_
    assert set(choice.validation_scores_) == {"logreg", "svm", "mlp"}  # stacking needs two blocks
    assert choice.validation_scores_["logreg"] < 0.75 and choice.chosen_ in ("svm", "mlp")
    test_x, test_y = rings(200, seed=5)
    assert (task.predict(test_x) == test_y).mean() >= 0.95
    # Linearly separable blobs: every candidate is perfect on validation and the tie keeps the simplest.
    lin_x, lin_y = blobs(np.array([[0.0] * 5, [6.0] * 5]), ["p", "q"], 40, seed=6)
    assert ClassifyTask(features=["emb"]).fit(lin_x, lin_y).estimator_.chosen_ == "logreg"


class WrongWhereFlagged(ClassifierMixin, BaseEstimator):
    """A model that answers the label in column 0 of block "emb", except where column `flag` is set: a model of
    known errors, to test the rule that chooses between models."""

    def __init__(self, flag: int = 1):
        self.flag = flag

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, x):
        emb = x["emb"]
        right = self.classes_[emb[:, 0].astype(int)]
        return np.where(emb[:, self.flag] > 0, self.classes_[(emb[:, 0].astype(int) + 1) % 2], right)


def test_auto_keeps_the_simpler_model_unless_the_other_wins_beyond_the_noise():
    from curata.tasks.classify import ValidatedChoice

    rng = np.random.default_rng(0)
    n = 1000
    label = rng.integers(0, 2, n)
    simple_wrong = rng.random(n) < 0.10
    # Right on 60% of the simple model's errors, wrong on 5% of its right answers: a little better, different.
    close_wrong = np.where(simple_wrong, rng.random(n) < 0.4, rng.random(n) < 0.05)
    far_wrong = simple_wrong & (rng.random(n) < 0.2)  # right on four fifths: ~8 points better
    x = {"emb": np.c_[label, simple_wrong, close_wrong, far_wrong].astype(float)}
    y = np.array(["a", "b"])[label]
    candidates = (("simple", WrongWhereFlagged(1)), ("close", WrongWhereFlagged(2)), ("far", WrongWhereFlagged(3)))
    close = ValidatedChoice(candidates[:2]).fit(x, y)
    scores, margin = close.validation_scores_, close.validation_margin_
    assert scores["close"] > scores["simple"] and scores["close"] - scores["simple"] <= margin["simple"]
    assert close.chosen_ == "simple"  # a win within the noise of 200 validation items keeps the simpler model
    assert margin["close"] == 0.0
    far = ValidatedChoice(candidates).fit(x, y)
    assert far.chosen_ == "far" and far.validation_scores_["far"] - far.validation_scores_["simple"] >= 0.04


def test_stacking_is_a_candidate_with_two_blocks_and_auto_may_pick_it():
    x, y = blobs(np.random.default_rng(7).normal(0, 3, (3, 8)), ["a", "b", "c"], 30, seed=8)
    x["words"] = np.random.default_rng(9).normal(0, 1, (len(y), 5))  # a block that carries nothing
    task = ClassifyTask(features=["emb", "words"])
    assert set(task.candidates()) == {"auto", "logreg", "svm", "mlp", "stacking"}
    fitted = task.fit(x, y).estimator_
    assert set(fitted.validation_scores_) == {"logreg", "svm", "mlp", "stacking"}


def test_block_balancer_gives_each_block_the_same_weight():
    rng = np.random.default_rng(10)
    wide, narrow = rng.normal(5, 3, (200, 400)), rng.normal(-2, 0.1, (200, 4))
    balanced = BlockBalancer((4, 400)).fit_transform(np.c_[narrow, wide])
    share = [np.mean(np.sum(balanced[:, :4] ** 2, 1)), np.mean(np.sum(balanced[:, 4:] ** 2, 1))]
    assert share[0] == pytest.approx(202, rel=1e-6) and share[1] == pytest.approx(202, rel=1e-6)  # 404 / 2 each
    one = BlockBalancer((400,)).fit_transform(wide)  # one block: plain standardisation
    assert np.allclose(one, (wide - wide.mean(0)) / wide.std(0))
    with pytest.raises(ValueError, match="do not add up"):
        BlockBalancer((4, 4)).fit(np.c_[narrow, wide])
    # Through BlockClassifier: the blocks are laid out in sorted name order, as concat_blocks does.
    model = BlockClassifier(("b_wide", "a_narrow"), balance=True).fit(
        {"b_wide": wide, "a_narrow": narrow}, np.repeat(["s", "t"], 100))
    assert model.model_.steps[0][1].widths == (4, 400)


def test_svm_gamma_grid_follows_the_dimension():
    x, y = blobs(np.random.default_rng(11).normal(0, 2, (2, 600)), ["a", "b"], 20, seed=12)
    svm = TunedSVC(c_values=(1.0,), gamma_values=None, gamma_factors=(1.0,), inner_splits=2).fit(x["emb"], y)
    assert svm.best_params_["gamma"] == pytest.approx(1 / 600, rel=1e-6)  # standardised: "scale" is 1/d
    # The grid searched on a stratified sample, the model calibrated and fitted on every item.
    many_x, many_y = blobs(np.random.default_rng(13).normal(0, 2, (3, 20)), ["a", "b", "c"], 80, seed=14)
    sampled = TunedSVC(c_values=(1.0, 10.0), gamma_values=None, search_rows=60, inner_splits=3).fit(many_x["emb"],
                                                                                                 many_y)
    assert sampled.search_items_ == 60 and (sampled.predict(many_x["emb"]) == many_y).mean() >= 0.95


def test_held_out_split_from_a_column_or_drawn():
    y = np.repeat(["a", "b"], 20)
    column = np.array(["train"] * 24 + ["val"] * 6 + ["test"] * 8 + ["", "holdout"])
    split = held_out(y, split=column)
    assert split.sizes() == {"train": 24, "val": 6, "test": 8} and split.left_out == 2
    assert split.val_from == "split column"
    no_val = held_out(y, split=np.array(["train"] * 30 + ["test"] * 10), seed=3)
    assert no_val.sizes() == {"train": 24, "val": 6, "test": 10} and "of train" in no_val.val_from
    assert not set(no_val.val) & set(no_val.train) and set(no_val.val) <= set(range(30))
    drawn = held_out(y, fraction=0.2, seed=0)
    assert drawn.sizes() == {"train": 24, "val": 8, "test": 8}
    for part in (drawn.val, drawn.test):  # stratified: both classes in every part
        assert set(y[part]) == {"a", "b"}
    assert sorted(np.concatenate([drawn.train, drawn.val, drawn.test]).tolist()) == list(range(40))
    with pytest.raises(NotEnoughData, match="'train' and 'test'"):
        held_out(y, split=np.array(["train"] * 40))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """120 drawn images of 4 colours, each with a text naming its colour, and a train / val / test column."""
    root = tmp_path_factory.mktemp("classify")
    write_colour_table(root, 120, (20, 16), text=True)
    workspace = Workspace(root / "ws")
    ingest(root / "items.csv", workspace)
    for name in ("color_stats", "tfidf"):
        compute(make_extractor(name), workspace)
    return workspace


def test_classify_chooses_features_from_what_was_computed(ws):
    result = run(ws, TrainOptions(task="classify", folds=3), save=False)
    assert list(result.protocol["features"]) == ["color_stats", "tfidf"]  # an image block and a text block
    assert result.results[0].name == "auto" and result.results[0].summary["accuracy"]["mean"] >= 0.95
    assert len(result.results[0].extra["chosen"]) == 3  # one choice per fold, made inside each training fold


def test_held_out_protocol_scores_test_once_and_saves_the_model_it_scored(ws):
    result = run(ws, TrainOptions(task="classify", features=["color_stats"], use_split=True, compare=True,
                                  name="held"))
    protocol = result.protocol
    assert protocol["split_sizes"] == {"train": 72, "val": 24, "test": 24}
    assert {row["model"] for row in protocol["validation"]} == {"auto", "logreg", "svm", "mlp"}
    assert [r.name for r in result.results] == [protocol["scored"]["model"]]  # only the chosen one on test
    assert protocol["scored"]["items"] == 24 and len(protocol["scored"]["ids"]) == 24
    test_ids = set(ws.items().query("split == 'test'")["id"])
    assert set(protocol["scored"]["ids"]) == test_ids
    card = json.loads((result.bundle / "card.json").read_text())
    assert card["training"]["items"] == 96 and card["training"]["final_fit"] == "train+val"  # test never fitted
    if protocol["scored"]["model"] == "auto":  # what auto chose is said, for the test fit and the saved model
        assert result.results[0].extra["chosen"][0] in ("logreg", "svm", "mlp")
        assert card["training"]["auto"]["chosen"] in card["training"]["auto"]["validation_accuracy"]
    everything = run(ws, TrainOptions(task="classify", features=["color_stats"], use_split=True, final_fit="all",
                                      name="held-all"))
    assert json.loads((everything.bundle / "card.json").read_text())["training"]["items"] == 120
    html = Path(result.report["html"]).read_text()
    assert "scored once on test" in html and "confusion matrix (held-out test)" in html
    assert next(iter(test_ids)) not in html  # the ids are in report.json, not on the page
    assert json.loads(Path(result.report["json"]).read_text())["protocol"]["scored"]["items"] == 24
    drawn = run(ws, TrainOptions(task="classify", features=["color_stats"], holdout=0.25, model="logreg"),
                save=False)
    assert drawn.protocol["split_sizes"] == {"train": 60, "val": 30, "test": 30}


def test_cli_says_held_out_test_not_folds_and_refuses_mixed_protocols(ws):
    from curata.cli import app

    cli = CliRunner()
    done = cli.invoke(app, ["train", "classify", "-w", str(ws.root), "--features", "color_stats", "--use-split",
                            "--model", "logreg", "--name", "cli-held"])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "held-out test: logreg fitted on train+val, scored once on 24 test items" in text
    assert "72 train, 24 val (split column), 24 test" in text and "folds" not in text and "±" not in text
    auto = cli.invoke(app, ["train", "classify", "-w", str(ws.root), "--features", "color_stats", "--holdout", "0.25",
                            "--name", "cli-auto"])
    assert auto.exit_code == 0, auto.output
    said = " ".join(auto.output.split())
    assert "auto chose: " in said and "the saved model: " in said and "validation accuracy logreg" in said
    both = cli.invoke(app, ["evaluate", "classify", "-w", str(ws.root), "--use-split", "--holdout", "0.2"])
    assert both.exit_code == 2 and "give one" in both.output
    wrong = cli.invoke(app, ["evaluate", "colour", "-w", str(ws.root), "--open-set", "--features", "color_stats",
                             "--target", "label"])
    assert wrong.exit_code == 2 and "--open-set applies to classify and collection" in " ".join(wrong.output.split())
    opened = cli.invoke(app, ["evaluate", "classify", "-w", str(ws.root), "--features", "color_stats", "--model",
                              "logreg", "--open-set", "--folds", "3", "--json"])
    assert opened.exit_code == 0, opened.output
    row = json.loads(opened.stdout)["table"][0]
    assert 0.8 <= row["coverage"] <= 1.0 and row["accepted_accuracy"] >= row["accuracy"]


def test_pixel_art_gets_pixel_features_by_default(tmp_path):
    """On pixel art (small images, few colours) classify, collection and tags default to the pixel blocks when
    they were computed, tags with ridge; on photos-like images to EfficientNet's block."""
    from curata.tasks.runner import prepare

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = ["punk", "ape"][i % 2]
        sprite = rng.choice([0, 255], (24, 24, 3)).astype(np.uint8)  # a 24x24 sprite of 8 colours
        from PIL import Image

        Image.fromarray(sprite).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": label, "tags": f"hat={'yes' if i % 3 else 'no'}"})
    pd.DataFrame(rows).to_csv(tmp_path / "items.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    ingest(tmp_path / "items.csv", ws)
    for name in ("color_stats", "pixels", "pixels_onehot"):
        compute(make_extractor(name), ws)
    for task, want in (("classify", ["pixels"]), ("collection", ["pixels"]), ("tags", ["pixels_onehot"])):
        *_, protocol = prepare(ws, TrainOptions(task=task, folds=2, min_tag_count=2))
        assert list(protocol["features"]) == want, task
    assert prepare(ws, TrainOptions(task="tags", folds=2, min_tag_count=2))[0].model == "ridge"
    assert prepare(ws, TrainOptions(task="tags", folds=2, min_tag_count=2, features=["color_stats"]))[0].model is None


def test_the_probe_fits_classes_smaller_than_its_inner_folds():
    """Three items per class and three outer folds leave two per class in each training part: the probe's inner
    cross-validation (3 folds) takes two instead of failing inside scikit-learn; one item is one clear line."""
    from curata.tasks.classify import probe

    x, y = blobs(np.eye(4) * 6, ["a", "b", "c", "d"], per_class=2, seed=0)
    model = BlockClassifier(blocks=["emb"], model=probe()).fit(x, y)
    assert (model.predict(x) == y).mean() == 1.0
    with pytest.raises(ValueError, match="single training item"):
        BlockClassifier(blocks=["emb"], model=probe()).fit({"emb": x["emb"][::2]}, y[::2])
