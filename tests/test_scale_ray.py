"""The Ray engine against the local engine, on a real local Ray runtime (2 CPUs) and 300 images the test
draws: same vectors, same per-item errors, nothing recomputed, same predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_image
from curata import tables
from curata.features.engine import compute, load_matrix, make_extractor
from curata.features.store import FeatureStore
from curata.ingest.pipeline import ingest
from curata.scale import compute_ray, predict_ray
from curata.tasks.runner import TrainOptions, predict_images, run
from curata.workspace import Workspace

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
WORDS = ["linen", "cotton", "silk", "wool", "denim", "leather", "canvas", "velvet"]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One local runtime for the module; the engine reuses a runtime that is already initialised."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """300 small images (PNG and JPEG, 3 colour classes) listed in a CSV with a text and a label."""
    root = tmp_path_factory.mktemp("scale")
    rows = []
    rng = np.random.default_rng(0)
    for i in range(300):
        label = list(COLOURS)[i % 3]
        name = f"img/{label}_{i:03d}." + ("jpg" if i % 4 == 0 else "png")
        write_image(root / name, size=(24 + i % 17, 20 + i % 11), color=COLOURS[label])
        words = " ".join(rng.choice(WORDS, 3))
        rows.append({"image": name, "text": f"{label} shirt in {words}", "label": label})
    pd.DataFrame(rows).to_csv(root / "items.csv", index=False)
    return root


def _workspace(collection: Path, name: str) -> Workspace:
    ws = Workspace(collection / name)
    if not ws.exists:
        ingest(collection / "items.csv", ws)
    return ws


@pytest.fixture(scope="module")
def corrupt(collection) -> Path:
    """Ingested intact in both workspaces, then damaged: the engines must report it, not crash."""
    _workspace(collection, "ws_local"), _workspace(collection, "ws_ray")
    path = collection / "img" / "green_001.png"
    (collection / "green_001.png.bak").write_bytes(path.read_bytes())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return path


def _same_features(name: str, collection: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    local_ws, ray_ws = _workspace(collection, "ws_local"), _workspace(collection, "ws_ray")
    local = compute(make_extractor(name), local_ws)
    with monkeypatch.context() as patched:
        def no_vectors_here(*args, **kwargs):
            raise AssertionError("the driver appended vectors: the Ray actors should have written them")

        patched.setattr(FeatureStore, "append", no_vectors_here)  # in this (the driver's) process only
        remote = compute_ray(make_extractor(name), ray_ws, batch_size=16)
    assert (remote.items, remote.computed, remote.cached, remote.errors) == \
           (local.items, local.computed, local.cached, local.errors)
    expected, expected_errors = load_matrix(local_ws, make_extractor(name))
    got, errors = load_matrix(ray_ws, make_extractor(name))
    assert errors == expected_errors
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    return local, remote, errors


def test_image_features_match_local_engine_and_report_the_corrupt_image(collection, corrupt, monkeypatch):
    ray_ws = _workspace(collection, "ws_ray")
    bad = int(np.flatnonzero(ray_ws.items()["image"].str.endswith("green_001.png"))[0])
    for name in ("color_stats", "palette"):
        _, remote, errors = _same_features(name, collection, monkeypatch)
        assert remote.computed == 300 and remote.errors == 1
        assert errors[bad]  # and the same reason as the local engine gives (checked in _same_features)
        assert errors.count(None) == 299
    # Failed rows are not cached: once the image is readable again exactly that one is computed, then nothing.
    shutil.copyfile(collection / "green_001.png.bak", corrupt)
    try:
        retry = compute_ray(make_extractor("color_stats"), ray_ws)
        assert (retry.computed, retry.cached, retry.errors) == (1, 299, 0)
        assert load_matrix(ray_ws, make_extractor("color_stats"))[1] == [None] * 300
        again = compute_ray(make_extractor("color_stats"), ray_ws)
        assert (again.computed, again.cached) == (0, 300)
    finally:
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))


def test_fitted_extractor_is_fitted_once_on_the_driver_and_shipped(collection, monkeypatch):
    _, remote, errors = _same_features("tfidf", collection, monkeypatch)
    assert remote.fitted and remote.computed > 1 and errors == [None] * 300
    state = _workspace(collection, "ws_ray").root / "models" / "extractors"
    assert len(list(state.rglob("fit.json"))) == 1
    local_fit = json.loads(next((_workspace(collection, "ws_local").root / "models").rglob("fit.json")).read_text())
    assert json.loads(next(state.rglob("fit.json")).read_text())["fit_id"] == local_fit["fit_id"]


@pytest.fixture(scope="module")
def bundle(collection) -> Path:
    ws = _workspace(collection, "ws_local")
    compute(make_extractor("color_stats"), ws)
    return run(ws, TrainOptions(task="collection", target="label", features=["color_stats"], folds=3,
                                name="colours")).bundle


def test_predict_on_ray_matches_predict_images(collection, corrupt, bundle, tmp_path):
    paths = [*sorted((collection / "img").glob("*"))[::3], corrupt, collection / "missing.png"]
    expected = predict_images(bundle, paths)
    # A Parquet file of paths relative to it: same rows as the local path, in order, and written as parts.
    table = collection / "paths.parquet"
    pd.DataFrame({"image": [str(p.relative_to(collection)) for p in paths]}).to_parquet(table)
    got = predict_ray(bundle, table, output=tmp_path / "out", keep_rows=True, batch_size=8)
    assert [r["image"] for r in got.rows] == [str(p) for p in paths]
    for row, want in zip(got.rows, expected, strict=True):
        assert row.get("error") == want.get("error") and row.get("prediction") == want.get("prediction")
        for label, score in want.get("scores", {}).items():
            assert row["scores"][label] == pytest.approx(score, abs=1e-4)
    assert (got.items, got.errors) == (len(paths), 2)
    assert "file not found" in got.rows[-1]["error"] and got.rows[-2]["error"]
    parts = pd.read_parquet(tmp_path / "out")
    assert len(parts) == len(paths) and parts["error"].notna().sum() == 2
    assert sorted(parts["prediction"].dropna()) == sorted(r["prediction"] for r in expected if "prediction" in r)
    with pytest.raises(ValueError, match="already holds"):
        predict_ray(bundle, table, output=tmp_path / "out")
    # Without the rows asked back, the workers write the parts (Ray Data's distributed write): same rows.
    written = predict_ray(bundle, table, output=tmp_path / "written", batch_size=8)
    assert written.rows == [] and (written.items, written.errors) == (len(paths), 2)
    parts = sorted((tmp_path / "written").glob("part-*.parquet"))
    by_image = pd.concat(pd.read_parquet(p) for p in parts).set_index("image")
    assert sorted(by_image.index) == sorted(str(p) for p in paths)
    assert all(by_image.loc[r["image"], "prediction"] == r.get("prediction") for r in got.rows if "prediction" in r)


def test_cli_engine_ray(collection, bundle):
    from curata.cli import app

    cli = CliRunner()
    local_ws, ray_ws = _workspace(collection, "ws_local"), _workspace(collection, "ws_ray")
    features = ["features", "-w", str(ray_ws.root), "-e", "color_hist", "--engine", "ray", "--json"]
    result = cli.invoke(app, features)
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)[0]
    assert first["computed"] == 300 and first["extractor"].startswith("color_hist")
    compute(make_extractor("color_hist"), local_ws)
    np.testing.assert_allclose(load_matrix(ray_ws, make_extractor("color_hist"))[0],
                               load_matrix(local_ws, make_extractor("color_hist"))[0], rtol=1e-5, atol=1e-6)
    # Every workspace item predicted from its image by actors: the model works (not the same garbage twice).
    predicted = cli.invoke(app, ["predict", str(bundle), "--all", "--engine", "ray", "-w", str(local_ws.root),
                                 "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    labels = dict(zip(local_ws.items()["id"], local_ws.items()["label"], strict=True))
    assert len(rows) == 300 and sum(r.get("prediction") == labels[r["id"]] for r in rows) >= 290
    bad = cli.invoke(app, ["features", "-w", str(ray_ws.root), "-e", "color_hist", "--engine", "spark"])
    assert bad.exit_code == 2 and "engine" in bad.output


def test_ingest_on_ray_verifies_like_the_local_engine(broken_folder, tmp_path):
    """Every image checked in Ray tasks gets the local engine's code, reason, hash and size; one commit."""
    from curata.cli import app

    local_ws, ray_ws = Workspace(tmp_path / "local"), Workspace(tmp_path / "ray")
    local = ingest(broken_folder["root"], local_ws)
    result = CliRunner().invoke(app, ["ingest", broken_folder["root"], "-w", str(ray_ws.root), "--engine", "ray",
                                      "--json"])
    assert result.exit_code == 0, result.output
    remote = json.loads(result.stdout)
    assert remote["summary"]["engine"] == "ray" and remote["summary"]["nodes"] == 1
    assert "nodes" not in local.summary() and local.summary()["engine"] == "local"

    def entries(report: list[dict]) -> dict:
        return {Path(e["ref"]).name: (e["status"], e["code"], e["reason"], e["notes"]) for e in report}

    assert entries(remote["entries"]) == entries([vars(e) for e in local.entries])
    rejected = {name for name, entry in entries(remote["entries"]).items() if entry[0] == "error"}
    assert rejected == {n for n, c in broken_folder.items() if n != "root" and c != "ok"}
    columns = ["id", "image_sha256", "width", "height", "image_mode", "image_format"]
    pd.testing.assert_frame_equal(ray_ws.items(columns).sort_values("id", ignore_index=True),
                                  local_ws.items(columns).sort_values("id", ignore_index=True))
    assert [h["action"] for h in ray_ws.collection.history()] == [h["action"] for h in local_ws.collection.history()]


def test_ingest_ray_options_need_the_ray_engine(tmp_path):
    from curata.cli import app

    write_image(tmp_path / "img" / "a.png")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "img"), "-w", str(tmp_path / "ws"), "--ray-cpus", "2"])
    assert result.exit_code == 2 and "--engine ray" in result.output
    assert not Workspace(tmp_path / "ws").exists


def test_the_driver_plans_window_by_window(tmp_path, monkeypatch):
    """Windows of 30 items: several Ray Data jobs, each committed before the next is planned, so an image listed
    twice (in two windows) is computed once; the run's many small fragments are merged by Ray tasks, not by the
    driver; the vectors equal the local engine's, and a rerun does nothing."""
    import curata.scale.ray_engine as ray_engine

    rows = []
    for i in range(100):
        label = list(COLOURS)[i % 3]
        path = write_image(tmp_path / "img" / f"{i:03d}.png", size=(16 + i % 13, 12 + i % 9), color=COLOURS[label])
        rows.append({"image": str(path), "label": label})
    table = pd.DataFrame(rows)
    table.assign(id=[f"a{i}" for i in range(100)]).to_csv(tmp_path / "once.csv", index=False)
    pd.concat([table.assign(id=[f"a{i}" for i in range(100)]),
               table.assign(id=[f"b{i}" for i in range(100)])]).to_csv(tmp_path / "twice.csv", index=False)
    ws, local = Workspace(tmp_path / "ws"), Workspace(tmp_path / "local")
    ingest(tmp_path / "twice.csv", ws)
    ingest(tmp_path / "once.csv", local)
    monkeypatch.setattr(ray_engine, "WINDOW_ITEMS", 30)
    monkeypatch.setattr(ray_engine, "WRITE_ROWS", 2)  # 50 fragments: more than finish() leaves unmerged

    def not_on_the_driver(*args, **kwargs):
        raise AssertionError("the driver compacted the store: Ray tasks should have merged its fragments")

    monkeypatch.setattr(tables, "compact", not_on_the_driver)
    jobs = []
    real = ray_engine._window_batches
    monkeypatch.setattr(ray_engine, "_window_batches", lambda todo, rows: jobs.append(len(todo)) or real(todo, rows))
    run = compute_ray(make_extractor("color_stats"), ws, batch_size=2)
    assert (run.items, run.computed, run.cached, run.errors) == (200, 100, 100, 0)
    assert len(jobs) >= 4 and sum(jobs) == 100 and max(jobs) <= 30
    fragments = FeatureStore.for_extractor(ws.dir("features"), make_extractor("color_stats"))._dataset().get_fragments()
    assert len(fragments) <= 3  # merged by Ray tasks (Lance's distributed compaction), committed by the driver
    compute(make_extractor("color_stats"), local)
    got = load_matrix(ws, make_extractor("color_stats"))[0]
    expected = load_matrix(local, make_extractor("color_stats"))[0]
    np.testing.assert_allclose(got[:100], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[100:], expected, rtol=1e-5, atol=1e-6)
    again = compute_ray(make_extractor("color_stats"), ws)
    assert (again.computed, again.cached) == (0, 200)
