"""Suspicious labels, class outliers and the quality report, on collections the test builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_image
from curata.cli import app
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.quality import class_outliers, quality_workspace, suspicious_labels
from curata.workspace import Workspace

COLOURS = {"red": (210, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}


def blobs(seed: int = 0, per_class: int = 30, d: int = 16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, d))
    x = np.vstack([c + rng.normal(0, 1, (per_class, d)) for c in centres])
    y = np.repeat(["a", "b", "c"], per_class).astype(object)
    return x, y


def test_flipped_labels_rank_first():
    x, y = blobs()
    flipped = [3, 40, 75]  # one item of each class given the next class's label
    for i in flipped:
        y[i] = {"a": "b", "b": "c", "c": "a"}[y[i]]
    ids = [f"item{i}" for i in range(len(y))]
    result = suspicious_labels(ids, x, y, folds=5, seed=0)
    top = [r["id"] for r in result["suspicious"][:3]]
    assert sorted(top) == sorted(f"item{i}" for i in flipped)
    first = result["suspicious"][0]
    assert first["suggested"] != first["label"] and first["margin"] > 0.5
    assert set(result["thresholds"]) == {"a", "b", "c"} and result["folds"] == 5


def test_clean_labels_and_bad_input():
    x, y = blobs(seed=1)
    assert suspicious_labels([str(i) for i in range(len(y))], x, y)["suspicious"] == []
    y1 = y.copy()
    y1[0] = "lonely"
    noted = suspicious_labels([str(i) for i in range(len(y))], x, y1)
    assert any("lonely" in n for n in noted["notes"]) and noted["items"] == len(y) - 1
    with pytest.raises(ValueError, match="at least 2 classes"):
        suspicious_labels(["a", "b", "c"], x[:3], ["x", "x", "x"])
    with pytest.raises(ValueError, match="must match"):
        suspicious_labels(["a"], x[:3], ["x", "y", "x"])


def test_outliers_are_far_from_their_class():
    x, y = blobs(seed=2)
    x[10] = x[10] + 25  # far from everything
    out = class_outliers([str(i) for i in range(len(y))], x, y)
    assert out and out[0]["id"] == "10" and out[0]["label"] == "a" and out[0]["z"] > 3.5
    constant = class_outliers(["p", "q", "r", "s", "t"], np.ones((5, 4)), ["k"] * 5)
    assert constant == []


@pytest.fixture(scope="module")
def colour_ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("quality")
    for name, rgb in COLOURS.items():
        for i in range(12):
            write_image(root / "src" / name / f"{name}{i}.png", size=(40, 40), color=rgb)
    # Two mislabelled images (a red one filed under green, a blue one under red) and one exact copy.
    write_image(root / "src" / "green" / "oops_red.png", size=(40, 40), color=COLOURS["red"])
    write_image(root / "src" / "red" / "oops_blue.png", size=(40, 40), color=COLOURS["blue"])
    (root / "src" / "blue" / "copy.png").write_bytes((root / "src" / "blue" / "blue3.png").read_bytes())
    ws = Workspace(root / "ws")
    ingest(root / "src", ws, IngestOptions(source_name="c"))
    compute(make_extractor("color_stats"), ws)
    return ws


def test_quality_workspace_writes_report_with_thumbnails(colour_ws):
    summary = quality_workspace(colour_ws, ["color_stats"])
    top = {r["id"] for r in summary["labels"]["suspicious"][:2]}
    assert top == {"c/green/oops_red.png", "c/red/oops_blue.png"}
    by_id = {r["id"]: r for r in summary["labels"]["suspicious"]}
    assert by_id["c/green/oops_red.png"]["suggested"] == "red"
    assert any({"c/blue/copy.png", "c/blue/blue3.png"} <= set(g["ids"]) for g in summary["duplicates"]["members"])
    page = Path(summary["files"]["html"]).read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 4 and "oops_red.png" in page
    assert json.loads(Path(summary["files"]["json"]).read_text(encoding="utf-8"))["items"] == 39


def test_cli_quality(colour_ws):
    runner = CliRunner()
    result = runner.invoke(app, ["quality", "-w", str(colour_ws.root), "-f", "color_stats", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"]["suspicious"]
    bad = runner.invoke(app, ["quality", "-w", str(colour_ws.root), "-f", "color_stats", "--target", "tag:nope"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["quality", "-w", str(colour_ws.root), "-f", "effnet_lite2"])
    assert missing.exit_code == 2 and "curata features" in missing.output
