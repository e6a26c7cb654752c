"""Train / evaluate / predict end to end on a small demo collection the test draws itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curata.demo.generate import generate_collection
from curata.evaluate.splits import NotEnoughData
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.tasks.bundle import BundleError
from curata.tasks.runner import TrainOptions, predict_images, predict_workspace, prepare, run
from curata.workspace import Workspace


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("runner")
    out = generate_collection(root / "demo", per_algorithm=12, size=128, workers=1)
    ws = Workspace(root / "ws")
    ingest(out.root, ws, IngestOptions(format="nft", source_name="demo", label_trait="algorithm"))
    for name in ("color_stats", "color_hist", "effnet_lite0"):
        compute(make_extractor(name), ws)
    return ws


def test_train_saves_bundle_card_and_report_and_predicts(demo_ws, tmp_path):
    result = run(demo_ws, TrainOptions(task="collection", features=["effnet_lite0"], folds=3))
    assert result.protocol["items_used"] == 96
    accuracy = result.results[0].summary["accuracy"]["mean"]
    assert accuracy > 0.3  # 8 algorithms: chance is 0.125 (palettes, hence colour features, are at chance)
    card = json.loads((result.bundle / "card.json").read_text())
    assert card["task"] == "collection" and len(card["labels"]) == 8
    assert card["features"] == {"effnet_lite0": make_extractor("effnet_lite0").key}
    assert "accuracy" in card["metrics"] and card["versions"]["scikit-learn"]
    html = Path(result.report["html"]).read_text()
    assert "collection" in html and "data:image/png;base64" in html
    # Predict new images through the bundle (features computed on the fly), one of them broken.
    images = sorted((demo_ws.root.parent / "demo" / "images").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = predict_images(result.bundle, [*images, broken])
    assert all(r["prediction"] in card["labels"] for r in rows[:3])
    assert "error" in rows[3] and "prediction" not in rows[3]
    every = predict_workspace(result.bundle, demo_ws)
    assert len(every) == 96 and all("prediction" in r for r in every)


def test_compare_colour_models_and_tags(demo_ws):
    colour = run(demo_ws, TrainOptions(task="colour", target="tag:color", features=["color_stats"], compare=True,
                                       folds=3, min_per_class=3), save=False)
    assert len(colour.results) >= 2  # several candidates in one table
    assert colour.bundle is None
    tags = run(demo_ws, TrainOptions(task="tags", target="tags:stroke", features=["color_hist"], folds=3,
                                     min_tag_count=3))
    assert tags.results[0].multilabel
    assert 0 <= tags.results[0].summary["micro_f1"]["mean"] <= 1


def test_bad_input_is_reported_clearly(demo_ws):
    with pytest.raises(NotEnoughData, match="fewer items than the 20 folds"):
        run(demo_ws, TrainOptions(task="collection", features=["color_hist"], folds=20), save=False)
    with pytest.raises(ValueError, match=r"not been computed .* `curata features -e palette`"):
        run(demo_ws, TrainOptions(task="collection", features=["palette"]), save=False)
    with pytest.raises(ValueError, match="unknown task"):
        run(demo_ws, TrainOptions(task="nope"), save=False)
    # Missing labels: only the labelled items are used, and the skipped count is said.
    *_, items, protocol = prepare(demo_ws, TrainOptions(task="collection", target="tag:rule", features=["color_hist"]))
    assert protocol["skipped"] == {"no tag:rule": 84}  # only the 12 cellular automata have a `rule` trait
    assert len(items) == protocol["items_used"] == 12


def test_bundle_trained_on_other_features_is_refused(demo_ws):
    result = run(demo_ws, TrainOptions(task="collection", features=["color_hist"], folds=2, name="tampered"))
    card_path = result.bundle / "card.json"
    card = json.loads(card_path.read_text())
    card["features"]["color_hist"] = "color_hist@0[old]"
    card_path.write_text(json.dumps(card))
    with pytest.raises(BundleError, match="trained on color_hist@0"):
        predict_workspace(result.bundle, demo_ws)


def test_cli_train_and_predict(demo_ws):
    base = [sys.executable, "-m", "curata.cli"]
    train = subprocess.run([*base, "train", "collection", "-w", str(demo_ws.root), "--features", "effnet_lite0",
                            "--folds", "2", "--name", "cli-model", "--json"], capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads(train.stdout)["table"][0]["accuracy"] > 0
    image = sorted((demo_ws.root.parent / "demo" / "images").glob("*.png"))[0]
    pred = subprocess.run([*base, "predict", "cli-model", str(image), "-w", str(demo_ws.root), "--json"],
                          capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert json.loads(pred.stdout)[0]["prediction"]
    missing = subprocess.run([*base, "predict", "nope", str(image), "-w", str(demo_ws.root)], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "no bundle" in missing.stderr


def test_a_joint_space_bundle_is_not_a_classifier(tmp_path):
    from curata.tasks.bundle import load_card

    folder = tmp_path / "joint"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({"kind": "joint_space", "dim": 256}))
    with pytest.raises(BundleError, match=r"joint text-image space.*curata search --model joint"):
        load_card(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(BundleError, match="not a valid model card"):
        load_card(folder)


def test_a_model_or_run_name_that_is_not_a_file_name_is_refused(tmp_path):
    from curata.cluster import cluster_workspace
    from curata.tasks.data import TaskDataError
    from curata.tasks.runner import TrainOptions, prepare
    from curata.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    with pytest.raises(TaskDataError, match=r"'my model/v2' is not a plain file name.*'my-model-v2'"):
        prepare(ws, TrainOptions(task="colour", name="my model/v2"))
    with pytest.raises(ValueError, match=r"run name '\.\./x' is not a plain file name"):
        cluster_workspace(ws, ["color_stats"], "kmeans", 2, name="../x")
