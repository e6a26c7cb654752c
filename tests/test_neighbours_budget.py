"""describe and quality on collections whose feature matrices exceed the memory budget: describe's neighbours
through the persistent vector index, quality's outliers streamed and its label check on a recorded sample.
A tiny CURATA_MEMORY_BUDGET makes `load_matrix` raise MemoryBudgetError for anything near the whole
collection, so these runs completing shows neither stage loads the whole matrix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from curata.budget import ENV, rows_within_budget
from curata.demo.generate import generate_collection
from curata.describe import DescribeOptions, Describer
from curata.describe.neighbours import IndexedNeighbourVotes, NeighbourVotes, neighbour_index_dir
from curata.features.engine import compute, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.quality import class_outliers, quality_workspace
from curata.quality.labels import streamed_class_outliers
from curata.search.index import VectorIndex
from curata.workspace import Workspace

EFFNET_ROW = 1280 * 4  # bytes of one effnet_lite0 vector
TINY = str(12 * EFFNET_ROW)  # 12 rows of effnet_lite0: the demo collection (64 items) is 5x over it


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("neighbours")
    out = generate_collection(root / "demo", per_algorithm=8, size=96, workers=1)
    ws = Workspace(root / "ws")
    ingest(out.root, ws, IngestOptions(format="nft", source_name="demo", label_trait="algorithm"))
    compute(make_extractor("effnet_lite0"), ws)
    return ws


def _top_neighbour_tags(row: dict, n: int = 3) -> list[str]:
    return [k["keyword"] for k in row["keywords"] if "neighbours" in k["source"]][:n]


@pytest.mark.slow
def test_describe_over_budget_agrees_with_in_memory(demo_ws, monkeypatch):
    options = DescribeOptions(use_models=False)
    dense = Describer.open(demo_ws, options)
    assert isinstance(dense.votes, NeighbourVotes) and dense.items is not None
    ids = demo_ws.items(["id"])["id"].tolist()[::4]  # 16 items, 2 per algorithm
    expected = dense.describe_items(ids, top_k=10)

    monkeypatch.setenv(ENV, TINY)
    assert len(demo_ws.items(["id"])) > rows_within_budget(EFFNET_ROW)
    small = Describer.open(demo_ws, options)
    assert isinstance(small.votes, IndexedNeighbourVotes) and small.items is None  # no collection frame held
    assert neighbour_index_dir(demo_ws, "effnet_lite0").joinpath("index.json").exists()
    assert small.sources == dense.sources
    got = small.describe_items([*ids, "demo/nope"], top_k=10)
    assert got[-1] == {"id": "demo/nope", "error": "no item 'demo/nope' in the workspace"}
    agree = same_neighbours = 0
    for want, row, item_id in zip(expected, got, ids, strict=False):
        assert row["id"] == item_id and row["keywords"]
        assert item_id not in {n["id"] for n in row["neighbours"]}
        assert all(-1.0001 <= n["similarity"] <= 1.0001 for n in row["neighbours"])
        agree += _top_neighbour_tags(row) == _top_neighbour_tags(want)
        same_neighbours += [n["id"] for n in row["neighbours"]] == [n["id"] for n in want["neighbours"]]
        assert row["colours"] == want["colours"]
    # Below 10,000 items the index searches exactly: the same neighbours, so the same voted tags.
    assert agree >= 0.8 * len(ids) and same_neighbours >= 0.8 * len(ids)

    # A new image (not in the workspace) is described through the index too.
    red = np.zeros((80, 80, 3), np.uint8)
    red[..., 0] = 220
    row = small.describe_images([red], top_k=5)[0]
    assert row["colours"][0]["name"] == "red" and len(row["neighbours"]) == 5


@pytest.mark.slow
def test_neighbour_index_is_reused_and_follows_item_changes(demo_ws, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, TINY)
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(demo_ws.root, ws.root)
    embedder = make_extractor("effnet_lite0")
    folder = neighbour_index_dir(ws, "effnet_lite0")
    first = IndexedNeighbourVotes.open(ws, embedder)
    n = len(first)
    assert n == len(ws.items(["id"])) and first.has_tags
    stamp = (folder / "index.json").stat().st_mtime_ns
    again = IndexedNeighbourVotes.open(ws, embedder)  # nothing changed: loaded, not rewritten
    assert len(again) == n and (folder / "index.json").stat().st_mtime_ns == stamp

    items = ws.items()
    gone, changed, twin = items["id"].iloc[0], items["id"].iloc[1], items.iloc[-1]
    items.loc[items["id"] == changed, ["image", "image_sha256"]] = [twin["image"], twin["image_sha256"]]
    ws.replace_items(items[items["id"] != gone].reset_index(drop=True))
    updated = IndexedNeighbourVotes.open(ws, embedder)
    assert len(updated) == n - 1 and gone not in updated.index
    # The changed item now has its twin's vector: each is the other's nearest neighbour.
    query = VectorIndex.load(folder).get([twin["id"]])
    assert updated.nearest(query, [twin["id"]])[0][0][0] == changed
    assert updated.nearest(np.zeros((1, embedder.dim), np.float32)) == [[]]  # no features: no neighbours


@pytest.mark.slow
def test_trained_ivfpq_neighbours_match_exact(demo_ws, tmp_path, monkeypatch):
    """Past `train_min` the index searches its quantised lists and re-ranks exactly; lowered here so the
    64-item demo trains it (halfway through the streamed adds, so later chunks go through the codes)."""
    import curata.search.index as index_module

    monkeypatch.setitem(index_module.DEFAULTS["ivfpq"], "train_min", 32)
    monkeypatch.setenv(ENV, TINY)
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(demo_ws.root, ws.root)
    shutil.rmtree(neighbour_index_dir(ws, "effnet_lite0"), ignore_errors=True)  # built untrained by other tests
    votes = IndexedNeighbourVotes.open(ws, make_extractor("effnet_lite0"))
    assert votes.index.trained and votes.index.faiss_index is not None
    ids = ws.items(["id"])["id"].tolist()
    vectors = votes.index.get(ids)
    exact = NeighbourVotes(ids, vectors, [[] for _ in ids], [None] * len(ids))
    rows, _ = exact.nearest(vectors, ids)
    found = votes.nearest(vectors, ids)
    overlap = np.mean([len({ids[r] for r in rows[q]} & {i for i, _ in found[q]}) / len(rows[q])
                       for q in range(len(ids))])
    assert overlap >= 0.9


@pytest.fixture(scope="module")
def colour_ws(tmp_path_factory) -> Workspace:
    colours = {"red": (210, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}
    root = tmp_path_factory.mktemp("quality-budget")
    for name, rgb in colours.items():
        for i in range(12):
            write_image(root / "src" / name / f"{name}{i}.png", size=(40, 40), color=rgb)
    write_image(root / "src" / "green" / "oops_red.png", size=(40, 40), color=colours["red"])
    write_image(root / "src" / "red" / "oops_blue.png", size=(40, 40), color=colours["blue"])
    ws = Workspace(root / "ws")
    ingest(root / "src", ws, IngestOptions(source_name="c"))
    compute(make_extractor("color_stats"), ws)
    return ws


def test_quality_over_budget_samples_labels_and_streams_outliers(colour_ws, monkeypatch):
    full = quality_workspace(colour_ws, ["color_stats"], duplicates=None)
    assert full["training_data"]["mode"] == "all" and full["memory"]["mode"] == "in_memory"
    assert full["training_data"]["rows_used"] == full["training_data"]["rows_total"] == 38

    row = make_extractor("color_stats").dim * 4
    monkeypatch.setenv(ENV, str(48 * row))  # 24 of the 38 labelled rows fit in the training share (half)
    import curata.tasks.data as data

    seen: list[int] = []
    real = data.load_matrix

    def spy(workspace, extractor, items=None):
        seen.append(len(items))
        return real(workspace, extractor, items)

    monkeypatch.setattr(data, "load_matrix", spy)
    small = quality_workspace(colour_ws, ["color_stats"])
    assert seen and max(seen) <= 24  # the label check loaded its sample only
    assert small["training_data"] == {"mode": "sample", "rows_used": 24, "rows_total": 38,
                                      "budget_bytes": 48 * row}
    assert small["memory"] == {"mode": "streamed", "budget_bytes": 48 * row}
    assert small["items"] == 38 and small["labels"]["items"] == 24
    assert small["outliers"] == full["outliers"]  # streamed in chunks, the same answer
    assert small["duplicates"]["groups"] >= 0  # phash near-duplicates need no feature matrix
    saved = json.loads(Path(small["files"]["json"]).read_text(encoding="utf-8"))
    assert saved["training_data"]["mode"] == "sample" and saved["memory"]["mode"] == "streamed"
    assert "stratified sample of 24" in Path(small["files"]["html"]).read_text(encoding="utf-8")

    # Near-duplicates by embedding need the whole matrix: skipped with a note, the rest still reported.
    noted = quality_workspace(colour_ws, ["color_stats"], duplicates="embedding")
    assert noted["duplicates"] is None and "near-duplicates skipped" in noted["notes"][0]


def test_streamed_outliers_equal_in_memory():
    rng = np.random.default_rng(3)
    x = np.vstack([c + rng.normal(0, 1, (20, 8)) for c in rng.normal(0, 4, (3, 8))]).astype(np.float32)
    x[7] += 30
    y = np.repeat(["a", "b", "c"], 20).tolist()
    ids = [f"i{k}" for k in range(len(y))]

    def chunks():
        for a in range(0, len(y), 7):
            yield ids[a:a + 7], x[a:a + 7], y[a:a + 7]

    want = class_outliers(ids, x, y)
    assert want and want[0]["id"] == "i7"
    assert streamed_class_outliers(chunks) == want  # the same centres, distances and z-scores
