"""The memory budget: parsing it, load_matrix refusing over it, iter_matrix streaming, training on a
stratified sample, streamed k-means, and index chunks sized to it — on a small workspace of real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.budget import DEFAULT_BUDGET, ENV, MemoryBudgetError, memory_budget, parse_size, rows_within_budget
from curata.collection import Item, items_to_frame
from curata.features.engine import compute, iter_matrix, load_matrix, make_extractor
from curata.workspace import Workspace

N_PER = 20  # items per colour family: 60 in all
STATS_ROW = 18 * 4  # bytes of one color_stats row


def _colour_workspace(root: Path, grouped: bool = False) -> Workspace:
    """60 items in three well separated colour families (label = family), color_stats and color_hist
    computed. Items alternate families (any chunk holds all three), or come family by family (`grouped`)."""
    rng = np.random.default_rng(0)
    bases = [(220, 30, 30), (30, 60, 220), (30, 200, 60)]
    items = []
    for i in range(3 * N_PER):
        c = i // N_PER if grouped else i % 3
        arr = np.clip(np.array(bases[c]) + rng.integers(-25, 25, (24, 32, 3)), 0, 255).astype(np.uint8)
        path = root / "img" / f"c{c}_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        items.append(Item(id=f"s/{i:03d}", source="s", collection="c", image=str(path), image_sha256=f"sha{i}",
                          text=f"picture {i}", label=["red", "blue", "green"][c], tags=[f"hue={c}"]))
    ws = Workspace(root / "ws").create()
    ws.add_items(items_to_frame(items))
    for name in ("color_stats", "color_hist"):
        compute(make_extractor(name), ws)
    return ws


@pytest.fixture(scope="module")
def colour_ws(tmp_path_factory) -> Workspace:
    return _colour_workspace(tmp_path_factory.mktemp("budget"))


def test_budget_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size("4G") == 4 * 1024**3
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("2.5GB") == int(2.5 * 1024**3)
    assert parse_size("1GiB") == 1024**3 and parse_size("64k") == 65536
    assert parse_size("1048576") == 1048576 and parse_size(" 300 ") == 300
    monkeypatch.delenv(ENV, raising=False)
    assert memory_budget() == DEFAULT_BUDGET == 4 * 1024**3
    monkeypatch.setenv(ENV, "512M")
    assert memory_budget() == 512 * 1024**2
    assert rows_within_budget(1024) == 512 * 1024 and rows_within_budget(1024, share=0.5) == 256 * 1024
    monkeypatch.setenv(ENV, "10")
    assert rows_within_budget(1000) == 1  # a stage always makes progress
    for bad in ("lots", "4X", "-1G", "0", "1.2.3G"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            memory_budget()
    with pytest.raises(ValueError):
        rows_within_budget(0)


def test_load_matrix_refuses_a_matrix_over_budget(colour_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = make_extractor("color_stats")
    monkeypatch.setenv(ENV, str(60 * STATS_ROW))  # exactly fits
    matrix, _ = load_matrix(colour_ws, extractor)
    assert matrix.shape == (60, 18)
    monkeypatch.setenv(ENV, str(60 * STATS_ROW - 1))
    with pytest.raises(MemoryBudgetError, match=r"60 rows x 18 dims x 4 bytes.*memory budget.*CURATA_MEMORY_BUDGET"):
        load_matrix(colour_ws, extractor)
    with pytest.raises(ValueError):  # callers catching ValueError keep working
        load_matrix(colour_ws, make_extractor("color_stats+color_hist"))


@pytest.mark.parametrize("name", ["color_stats", "color_stats+color_hist"])
def test_iter_matrix_chunks_equal_load_matrix(colour_ws, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    extractor = make_extractor(name)
    items = colour_ws.items()
    whole, errors = load_matrix(colour_ws, extractor, items)
    assert not any(errors)
    chunks = list(iter_matrix(colour_ws, extractor, items, batch_rows=7))
    assert [start for start, _, _ in chunks] == list(range(0, 60, 7))
    assert all(len(m) == len(e) <= 7 for _, m, e in chunks)
    np.testing.assert_array_equal(np.concatenate([m for _, m, _ in chunks]), whole)
    assert [e for _, _, es in chunks for e in es] == errors
    # Without batch_rows the chunks are as large as the budget allows.
    monkeypatch.setenv(ENV, str(10 * extractor.dim * 4))
    sizes = [len(m) for _, m, _ in iter_matrix(colour_ws, extractor, items)]
    assert sizes == [10] * 6


def test_train_samples_within_budget_and_records_it(colour_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    from curata.tasks.runner import TrainOptions, predict_workspace, prepare, run

    monkeypatch.setenv(ENV, str(42 * STATS_ROW))  # 21 of the 60 rows fit in half of it (the training share)
    result = run(colour_ws, TrainOptions(task="collection", features=["color_stats"], folds=3, name="sampled"))
    expected = {"mode": "sample", "rows_used": 21, "rows_total": 60, "budget_bytes": 42 * STATS_ROW}
    assert result.training_data == expected
    assert result.protocol["training_data"] == expected and result.protocol["items_used"] == 21
    card = json.loads((result.bundle / "card.json").read_text())
    assert card["training"]["training_data"] == expected and card["training"]["items"] == 21
    report = json.loads(Path(result.report["json"]).read_text())
    assert report["protocol"]["training_data"] == expected
    # CV ran on the sample: 21 out-of-fold predictions over 3 folds.
    assert len(result.results[0].oof_pred) == 21 and len(result.results[0].folds) == 3
    # Stratified and seeded: every family keeps its share (7 of its 20), the same rows each time.
    *_, items, _ = prepare(colour_ws, TrainOptions(task="collection", features=["color_stats"], folds=3))
    assert items["label"].value_counts().to_dict() == {"red": 7, "blue": 7, "green": 7}
    *_, again, _ = prepare(colour_ws, TrainOptions(task="collection", features=["color_stats"], folds=3))
    assert items["id"].tolist() == again["id"].tolist()
    assert result.results[0].summary["accuracy"]["mean"] > 0.9  # well separated colours
    # The bundle works, and predicting the whole workspace streams it in budget-sized chunks.
    rows = predict_workspace(result.bundle, colour_ws)
    assert len(rows) == 60 and all("prediction" in r for r in rows)
    truth = dict(zip(colour_ws.items()["id"], colour_ws.items()["label"], strict=True))
    # Trained on 7 items a class, the open-set model says "unknown" for some; it never names a wrong family.
    assert all(r["prediction"] in (truth[r["id"]], "unknown") for r in rows)
    assert np.mean([r["prediction"] == truth[r["id"]] for r in rows]) > 0.5
    monkeypatch.setenv(ENV, "1G")  # in one piece: the same predictions
    assert sorted(predict_workspace(result.bundle, colour_ws), key=lambda r: r["id"]) == sorted(rows,
                                                                                                key=lambda r: r["id"])
    # Within the budget: every item, mode "all".
    full = run(colour_ws, TrainOptions(task="collection", features=["color_stats"], folds=3), save=False)
    assert full.training_data == {"mode": "all", "rows_used": 60, "rows_total": 60, "budget_bytes": 1024**3}


def test_stratified_sample_keeps_class_shares_and_rare_classes() -> None:
    from curata.tasks.data import rarest_label, stratified_sample

    y = np.array(["a"] * 80 + ["b"] * 17 + ["c"] * 3)
    pick = stratified_sample(y, 20, seed=1, min_per_stratum=3)
    assert len(pick) == 20 and len(set(pick)) == 20 and np.all(np.diff(pick) > 0)
    counts = pd.Series(y[pick]).value_counts().to_dict()
    assert counts["c"] == 3 and counts["a"] > counts["b"] >= 3
    np.testing.assert_array_equal(pick, stratified_sample(y, 20, seed=1, min_per_stratum=3))  # seeded
    assert len(stratified_sample(y, 2, seed=0, min_per_stratum=3)) == 2  # more strata than rows
    multi = np.array([[1, 1], [1, 0], [1, 0], [0, 0]])
    assert rarest_label(multi).tolist() == [1, 0, 0, -1]


def test_cluster_kmeans_streams_over_budget_and_agrees_with_in_memory(colour_ws,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.metrics import adjusted_rand_score

    from curata.cluster import cluster_workspace

    in_memory = cluster_workspace(colour_ws, ["color_stats"], "kmeans", k=3, name="mem", html=False, png=False)
    assert in_memory["memory"]["mode"] == "in_memory"
    monkeypatch.setenv(ENV, str(40 * STATS_ROW))  # 60 rows do not fit; chunks of 2 (1/16), a sample of 20
    streamed = cluster_workspace(colour_ws, ["color_stats"], "kmeans", k=3, name="streamed", html=True, png=False,
                                 max_thumbnails=5)
    assert streamed["memory"]["mode"] == "streamed"
    assert streamed["memory"]["chunk_rows"] == 2 and streamed["memory"]["sample_rows"] == 20
    assert streamed["params"]["streamed"]["chunk_rows"] == 2 and streamed["memory"]["lloyd_passes"] >= 1
    assert streamed["items"] == 60 and streamed["k"] == 3
    assert streamed["scores"]["silhouette"] > 0.5  # on the sample of 20
    assert streamed["scores"]["ari"] >= 0.9  # against the known labels, over every item
    mem = pd.read_parquet(in_memory["files"]["assignments"])
    out = pd.read_parquet(streamed["files"]["assignments"])
    assert out["id"].tolist() == mem["id"].tolist()
    assert adjusted_rand_score(mem["cluster"], out["cluster"]) >= 0.9
    assert out["x"].notna().sum() == 20  # the map covers the sample
    assert any("streamed k-means (the features exceed the memory budget)" in n for n in streamed["notes"])
    assert json.loads(Path(streamed["files"]["summary"]).read_text())["memory"]["mode"] == "streamed"
    chosen = cluster_workspace(colour_ws, ["color_stats"], "kmeans", k_range=(2, 5), name="chosen",
                               map_method="none", html=False, png=False)
    assert chosen["k"] == 3 and chosen["curve"]["best"] == 3  # k chosen on the sample
    # Methods and reductions that need every row in memory are refused with what to do.
    with pytest.raises(ValueError, match=r"memory budget.*--method kmeans.*CURATA_MEMORY_BUDGET"):
        cluster_workspace(colour_ws, ["color_stats"], "gmm", k=3, html=False, png=False)
    with pytest.raises(ValueError, match=r"memory budget.*--reduce none"):
        cluster_workspace(colour_ws, ["color_stats"], "kmeans", k=3, reduction="pca", html=False, png=False)


def test_index_chunks_follow_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from curata.search.searcher import _ENCODE_CHUNK, encode_chunk_rows

    class Encoder:
        bytes_per_item = 4 * (1000 + 384)

    monkeypatch.setenv(ENV, "1G")
    assert encode_chunk_rows(Encoder()) == _ENCODE_CHUNK  # type: ignore[arg-type]
    monkeypatch.setenv(ENV, str(100 * Encoder.bytes_per_item))
    assert encode_chunk_rows(Encoder()) == 100  # type: ignore[arg-type]


def test_multilabel_training_samples_by_rarest_tag(colour_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    from curata.tasks.runner import TrainOptions, run

    monkeypatch.setenv(ENV, str(60 * STATS_ROW))  # 30 rows in the training share (half)
    result = run(colour_ws, TrainOptions(task="tags", target="tags:hue", features=["color_stats"], folds=3,
                                         min_tag_count=3), save=False)
    assert result.training_data["mode"] == "sample" and result.training_data["rows_used"] == 30
    assert len(result.results[0].oof_pred) == 30
    assert result.results[0].summary["micro_f1"]["mean"] > 0.8


def test_feature_chunks_one_piece_within_budget_chunks_over_it(colour_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    from curata.tasks.data import feature_chunks, load_features

    items = colour_ws.items()
    names = ["color_stats", "color_hist"]
    whole, _ = load_features(colour_ws, names, items)
    assert [start for start, _, _ in feature_chunks(colour_ws, names, items)] == [0]
    row = 4 * (18 + make_extractor("color_hist").dim)
    monkeypatch.setenv(ENV, str(25 * row))
    chunks = list(feature_chunks(colour_ws, names, items))
    assert [start for start, _, _ in chunks] == [0, 25, 50]
    for name in names:
        np.testing.assert_array_equal(np.concatenate([b[name] for _, b, _ in chunks]), whole.blocks[name])
    with pytest.raises(MemoryBudgetError, match="color_stats\\+color_hist"):
        load_features(colour_ws, names, items)  # the blocks are checked together, before any is read


def test_streamed_kmeans_does_not_depend_on_ingest_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Items ingested family by family: chunks in item order would each hold one family; the refinement
    streams a seeded permutation instead, so the clusters are still the families."""
    from curata.cluster import cluster_workspace

    ws = _colour_workspace(tmp_path, grouped=True)
    monkeypatch.setenv(ENV, str(40 * STATS_ROW))
    summary = cluster_workspace(ws, ["color_stats"], "kmeans", k=3, map_method="none", html=False, png=False)
    assert summary["memory"]["mode"] == "streamed" and summary["scores"]["ari"] >= 0.9
