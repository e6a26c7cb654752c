"""The machine-wide feature cache: an image embedded in one workspace is copied, not recomputed, in another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from curata.features.engine import compute, load_matrix, make_extractor
from curata.features.shared_cache import shared_store
from curata.ingest.pipeline import ingest
from curata.workspace import Workspace


@pytest.fixture
def shared(tmp_path, monkeypatch):
    folder = tmp_path / "machine-cache"
    monkeypatch.setenv("CURATA_FEATURE_CACHE", str(folder))
    return folder


def _workspace(root, name: str, images: list[str]) -> Workspace:
    pd.DataFrame({"image": images, "text": [f"item {i}" for i in range(len(images))]}).to_csv(
        root / f"{name}.csv", index=False)
    ws = Workspace(root / name)
    ingest(root / f"{name}.csv", ws)
    return ws


def test_a_second_workspace_copies_what_the_first_computed(tmp_path, shared):
    images = [str(write_image(tmp_path / f"img/{i}.png", color=(30 * i, 100, 200 - 20 * i))) for i in range(6)]
    first = _workspace(tmp_path, "first", images[:5])
    second = _workspace(tmp_path, "second", images[2:])  # three images of the first, one new
    Path(images[4]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # damaged after ingest, in both
    run = compute(make_extractor("color_stats"), first)
    assert (run.computed, run.shared, run.errors) == (5, 0, 1)
    store = shared_store(make_extractor("color_stats"))
    assert store is not None and store.count() == 4  # the failed item is not shared: a later run retries it
    again = compute(make_extractor("color_stats"), second)
    assert (again.shared, again.computed, again.errors) == (2, 2, 1)
    assert store.count() == 5
    got, errors = load_matrix(second, make_extractor("color_stats"))
    want, _ = load_matrix(first, make_extractor("color_stats"))
    np.testing.assert_array_equal(got[:2], want[2:4])  # copied vectors are the first workspace's, bit for bit
    assert errors[:2] == [None, None] and errors[2] and errors[3] is None
    # A fitted extractor depends on its workspace's fit: never shared.
    assert shared_store(make_extractor("tfidf")) is None


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATA_FEATURE_CACHE", "off")
    assert shared_store(make_extractor("color_stats")) is None
    monkeypatch.delenv("CURATA_FEATURE_CACHE")
    monkeypatch.setenv("CURATA_CACHE", str(tmp_path / "cache"))
    store = shared_store(make_extractor("color_stats"))
    assert store is not None and store.path.is_relative_to(tmp_path / "cache" / "features")


def test_predict_on_files_reads_what_a_workspace_embedded(tmp_path, shared, monkeypatch):
    from curata.tasks.runner import TrainOptions, predict_images, run

    colours = [(200, 40, 40), (40, 60, 200)]
    images = [str(write_image(tmp_path / f"img/{i}.png", color=colours[i % 2])) for i in range(12)]
    pd.DataFrame({"image": images, "label": ["red", "blue"] * 6}).to_csv(tmp_path / "items.csv", index=False)
    ws = Workspace(tmp_path / "ws")
    ingest(tmp_path / "items.csv", ws)
    compute(make_extractor("color_stats"), ws)
    bundle = run(ws, TrainOptions(task="classify", features=["color_stats"], model="logreg", folds=2)).bundle
    store = shared_store(make_extractor("color_stats"))
    assert store.count() == 12
    new = write_image(tmp_path / "new.png", color=(190, 50, 45))
    rows = predict_images(bundle, [Path(images[0]), new])
    assert store.count() == 13  # the known image was read; only the new one was embedded, and is now shared
    assert [r["prediction"] for r in rows] == ["red", "red"]
    monkeypatch.setenv("CURATA_FEATURE_CACHE", "off")
    assert predict_images(bundle, [Path(images[0]), new]) == rows  # same answers without the cache
