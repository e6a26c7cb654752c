"""Retrain from curation: the report counts the curated target values and compares, on the same folds, the
chosen model trained on the source's values with the one trained on the curated values (both scored on the
curated values)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_image
from curata.curation import Curation, changes_from
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.table import ColumnMap
from curata.tasks import runner
from curata.tasks.runner import TrainOptions, curation_line, run
from curata.workspace import Workspace

COLOURS = {"red": (210, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210)}
PER_COLOUR = 14
WRONG = 6  # red images the source calls green


@pytest.fixture(scope="module")
def base_ws(tmp_path_factory) -> Workspace:
    """42 drawn images, 6 of the red ones labelled (and tagged) green by the source; color_stats computed."""
    root = tmp_path_factory.mktemp("curated")
    source = root / "source"
    rows = ["image,label,tags,family"]
    for colour, rgb in COLOURS.items():
        for i in range(PER_COLOUR):
            name = f"{colour}-{i:02d}.png"
            write_image(source / "images" / name, size=(24, 24), color=rgb)
            said = "green" if colour == "red" and i < WRONG else colour
            rows.append(f"images/{name},{said},color={said};shade={'dark' if i % 2 else 'light'},f{i % 3}")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    ws = Workspace(root / "ws")
    ingest(source, ws, IngestOptions(format="table", source_name="drawn", columns=ColumnMap(tags="tags"), workers=1))
    compute(make_extractor("color_stats"), ws)
    return ws


@pytest.fixture
def ws(base_ws, tmp_path) -> Workspace:
    """A private copy of the base workspace (features included), free to curate."""
    shutil.copytree(base_ws.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def ids_of(ws: Workspace, *names: str) -> list[str]:
    items = ws.items(["id", "image"])
    by_name = {Path(image).name: i for i, image in zip(items["id"], items["image"], strict=True)}
    return [by_name[n] for n in names]


WRONG_NAMES = [f"red-{i:02d}.png" for i in range(WRONG)]


@pytest.fixture
def no_extra_fit(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the source-trained model was cross-validated")

    monkeypatch.setattr(runner, "_cross_validate_on_source", refuse)


def test_curated_labels_are_counted_and_compared_on_the_same_folds(ws):
    curation = Curation(ws)
    curation.apply(ids_of(ws, *WRONG_NAMES), changes_from({"label": "red"}), who="test")
    # Curated but equal to the source's label: counted as curated, not as changed.
    curation.apply(ids_of(ws, "blue-00.png"), changes_from({"label": "blue"}), who="test")
    # A tags edit does not curate the label; an excluded item is not used at all.
    curation.apply(ids_of(ws, "green-00.png"), changes_from({"add_tags": ["mood=calm"]}), who="test")
    curation.apply(ids_of(ws, "green-01.png"), changes_from({"excluded": True}), who="test")

    result = run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], model="logreg", folds=3))
    cur = result.curation
    assert result.protocol["items_used"] == 3 * PER_COLOUR - 1
    assert cur["field"] == "label" and cur["target"] == "label"
    assert cur["curated_items"] == WRONG + 1
    assert cur["changed_from_source"] == WRONG
    assert cur["no_source_value"] == 0
    comparison = cur["comparison"]
    assert comparison["model"] == "logreg" and comparison["scored_on"] == "curated values"
    assert comparison["source_trained_items"] == comparison["items"] == 3 * PER_COLOUR - 1
    # The curated side is the run's own cross-validation of the chosen model (same folds, same numbers).
    row = result.table()[0]
    assert comparison["curated"]["accuracy"] == row["accuracy"]
    assert comparison["curated"]["macro_f1"] == row["macro_f1"]
    assert comparison["curated"]["accuracy"] >= comparison["source"]["accuracy"]
    assert comparison["curated"]["macro_f1"] >= comparison["source"]["macro_f1"]
    assert comparison["source"]["accuracy"] < 1.0  # trained on 6 red items called green, it errs on red ones

    card = json.loads((result.bundle / "card.json").read_text())
    assert card["training"]["curation"]["curated_items"] == WRONG + 1
    assert card["training"]["curation"]["comparison"]["curated"]["accuracy"] == row["accuracy"]
    report = json.loads(Path(result.report["json"]).read_text())
    assert report["curation"]["changed_from_source"] == WRONG
    assert report["curation"]["comparison"]["source"]["accuracy"] == comparison["source"]["accuracy"]
    assert "curation" not in report["protocol"]
    html = Path(result.report["html"]).read_text()
    assert "<h2>Curation</h2>" in html and "the source&#x27;s values" in html
    line = curation_line(cur)
    assert line.startswith(f"curated: {WRONG + 1} labels ({WRONG} differ from the source); same folds: "
                           "source-trained accuracy ")
    assert "→ curated-trained " in line and line.endswith("(scored on the curated values)")


def test_curated_tags_count_for_tag_targets(ws):
    for name in WRONG_NAMES:
        shade = "dark" if int(name[4:6]) % 2 else "light"
        Curation(ws).apply(ids_of(ws, name), changes_from({"tags": ["color=red", f"shade={shade}"]}), who="test")
    # A label edit does not curate the tags.
    Curation(ws).apply(ids_of(ws, "blue-00.png"), changes_from({"label": "navy"}), who="test")
    single = run(ws, TrainOptions(task="colour", target="tag:color", features=["color_stats"], model="logreg",
                                  folds=3), save=False)
    assert single.curation["field"] == "tags"
    assert single.curation["curated_items"] == single.curation["changed_from_source"] == WRONG
    comparison = single.curation["comparison"]
    assert comparison["curated"]["accuracy"] >= comparison["source"]["accuracy"]

    multi = run(ws, TrainOptions(task="tags", target="tags:color", features=["color_stats"], folds=3,
                                 min_tag_count=3), save=False)
    cur = multi.curation
    assert cur["curated_items"] == cur["changed_from_source"] == WRONG
    assert set(cur["comparison"]["source"]) >= {"micro_f1", "macro_f1", "mean_average_precision"}
    assert cur["comparison"]["curated"]["micro_f1"] >= cur["comparison"]["source"]["micro_f1"]
    assert "curated: 6 tags:color values (6 differ" in curation_line(cur) and "micro_f1" in curation_line(cur)


def test_no_curation_means_no_comparison_and_no_extra_fit(ws, no_extra_fit):
    result = run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], model="logreg", folds=3),
                 save=False)
    assert result.curation["curated_items"] == 0 and result.curation["comparison"] is None
    assert curation_line(result.curation) is None
    report = json.loads(Path(result.report["json"]).read_text())
    assert report["curation"]["comparison"] is None
    assert any("no item used has a curated label" in n for n in report["notes"])
    assert "<h2>Curation</h2>" not in Path(result.report["html"]).read_text()
    # A target only the source sets has no curation entry at all.
    meta = run(ws, TrainOptions(task="colour", target="meta:family", features=["color_stats"], model="logreg",
                                folds=3), save=False)
    assert meta.curation is None and "curation" not in meta.protocol


def test_curation_that_changes_no_target_value_needs_no_extra_fit(ws, no_extra_fit):
    Curation(ws).apply(ids_of(ws, "blue-00.png", "blue-01.png"), changes_from({"label": "blue"}), who="test")
    result = run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], model="logreg", folds=3),
                 save=False)
    cur = result.curation
    assert cur["curated_items"] == 2 and cur["changed_from_source"] == 0
    assert cur["comparison"]["source"] == cur["comparison"]["curated"]
    assert "both models are the same" in cur["note"]


def test_cli_train_prints_the_comparison(ws):
    Curation(ws).apply(ids_of(ws, *WRONG_NAMES), changes_from({"label": "red"}), who="test")
    train = subprocess.run([sys.executable, "-m", "curata.cli", "train", "colour", "-w", str(ws.root), "--target",
                            "label", "--features", "color_stats", "--model", "logreg", "--folds", "3", "--quiet"],
                           capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-2000:]
    out = " ".join(train.stdout.split())  # rich may wrap the line
    assert f"curated: {WRONG} labels ({WRONG} differ from the source); same folds: source-trained accuracy" in out
