"""The workspace's Lance tables: upserts that commit only changes, versions and rollback, conversion of
workspaces written before Lance, compaction and repair, lookups that read only what they are asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curata.cli import app
from curata.collection import SCHEMA, Collection, CollectionError, Item, items_to_frame
from curata.features.store import FeatureStore
from curata.workspace import Workspace


def frame(n: int, start: int = 0, **fields) -> pd.DataFrame:
    return items_to_frame([Item(id=f"src/{i}", source="src", collection="c", image=f"/pics/{i}.png",
                                image_sha256=f"{i:064x}", tags=["hat=red"], captions=["a cap"], **fields)
                           for i in range(start, start + n)])


def cli(*args: str | Path) -> dict | list:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_upsert_commits_only_what_changed(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.add_items(frame(50)) == (50, 0, 0)
    version = ws.collection.version
    assert ws.add_items(frame(50)) == (0, 0, 50)
    assert ws.collection.version == version  # nothing changed: no commit
    changed = frame(50)
    changed.loc[3, "label"] = "red"
    changed.loc[4, "tags"] = ["hat=blue"]  # a list column counts too
    assert ws.add_items(pd.concat([changed, frame(5, start=50)])) == (5, 2, 48)
    items = ws.items(["id", "label", "tags"]).set_index("id")
    assert len(items) == 55 and items.loc["src/3", "label"] == "red"
    assert list(items.loc["src/4", "tags"]) == ["hat=blue"]
    assert sorted(ws.collection.by_ids(["src/3", "src/54", "nope"], ["id"])["id"]) == ["src/3", "src/54"]


def test_pages_of_a_collection_of_small_ingests_are_whole(tmp_path):
    """Five ingests of 7 items are five fragments; pages of 10 gather them: 10, 10, 10, 5, every item once, and
    only from the fragments asked for."""
    ws = Workspace(tmp_path)
    for k in range(5):
        ws.add_items(frame(7, start=7 * k))
    collection = ws.collection
    assert len(collection.fragment_ids()) == 5
    pages = list(collection.iter_read(["id", "image_sha256"], batch_rows=10))
    assert [len(p) for p in pages] == [10, 10, 10, 5]
    assert sorted(pd.concat(pages)["id"]) == sorted(f"src/{i}" for i in range(35))
    first_two = collection.fragment_ids()[:2]
    assert [len(p) for p in collection.iter_read(["id"], batch_rows=10, fragments=first_two)] == [10, 4]
    assert list(collection.iter_read(["id"], batch_rows=10, fragments=[])) == []
    with pytest.raises(ValueError, match="not source columns"):
        list(collection.iter_read(["source_label"], batch_rows=10))


def test_history_and_rollback_undo_a_bad_ingest(tmp_path):
    ws = Workspace(tmp_path)
    ws.add_items(frame(10), "ingest good")
    good = ws.collection.version
    bad = frame(10)
    bad["label"] = "wrong"
    ws.add_items(bad, "ingest bad")
    history = cli("history", "-w", tmp_path)
    assert [h["what"] for h in history[:2]] == ["ingest bad", "ingest good"]
    assert history[0]["current"] and history[0]["updated"] == 10
    restored = cli("rollback", str(good), "-w", tmp_path)
    assert restored["restored"] == good and restored["items"] == 10
    assert ws.items(["label"])["label"].isna().all()
    assert cli("history", "-w", tmp_path)[0]["action"] == "rollback"
    with pytest.raises(CollectionError, match="has no version 999"):
        ws.collection.rollback(999)
    info = cli("info", "-w", tmp_path)
    assert info["items"] == 10 and info["versions"][0]["action"] == "rollback"


def write_pre_lance_workspace(root: Path, n: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    """A workspace as the Parquet release wrote it: `collection.parquet` and feature parts."""
    root.mkdir(parents=True)
    items = frame(n)
    pq.write_table(pa.Table.from_pandas(items, schema=SCHEMA, preserve_index=False), root / "collection.parquet")
    store = FeatureStore(root / "features", "color_stats@1", 4)
    store.path.mkdir(parents=True)
    (store.path / "extractor.json").write_text(json.dumps({"key": store.key, "dim": 4, "modality": "image"}))
    vectors = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    for i, half in enumerate((slice(0, n // 2), slice(n // 2, n))):
        flat = pa.array(vectors[half].reshape(-1), pa.float32())
        pq.write_table(pa.table({"hash": pa.array(list(items["image_sha256"][half])),
                                 "vector": pa.FixedSizeListArray.from_arrays(flat, 4),
                                 "error": pa.array([None] * (n // 2), pa.string())}),
                       store.path / f"part-{i:020d}-1-abcdef12.parquet")
    return items, vectors


def test_a_parquet_workspace_is_converted_once_and_verified(tmp_path):
    items, vectors = write_pre_lance_workspace(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    assert ws.exists
    assert sorted(ws.items()["id"]) == sorted(items["id"])
    assert not (ws.root / "collection.parquet").exists() and (ws.root / "collection.parquet.converted").exists()
    assert ws.collection.history()[0]["action"] == "convert"
    store = FeatureStore(ws.root / "features", "color_stats@1", 4)
    got, errors = store.lookup(list(items["image_sha256"][::-1]))
    np.testing.assert_array_equal(got, vectors[::-1])
    assert errors == [None] * len(items) and not list(store.path.glob("part-*"))
    assert ws.add_items(frame(41)) == (1, 0, 40)  # the converted rows are the same rows


def test_a_conversion_killed_midway_is_redone_or_finished(tmp_path):
    items, _ = write_pre_lance_workspace(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    (ws.root / ".collection.lance.999-deadbeef" / "_versions").mkdir(parents=True)  # killed while staging
    assert len(ws.items()) == len(items)
    # Killed after the verified table was renamed in, before the Parquet file was moved: not converted again.
    (ws.root / "collection.parquet.converted").rename(ws.root / "collection.parquet")
    ws.add_items(frame(1, start=100))
    assert len(ws.items()) == len(items) + 1 and not (ws.root / "collection.parquet").exists()


def test_a_damaged_fragment_is_named_and_repair_keeps_the_rest(tmp_path):
    ws = Workspace(tmp_path)
    ws.add_items(frame(10))
    ws.add_items(frame(5, start=10))  # a second fragment
    table = Collection(tmp_path)
    newest = max((table.path / "data").glob("*.lance"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"garbage" * 20)
    with pytest.raises(CollectionError, match="damaged fragment") as e:
        ws.items()
    assert str(table.path) in str(e.value) and "curata repair" in str(e.value)
    repaired = cli("repair", "-w", tmp_path)
    assert repaired == {**repaired, "dropped_items": 5, "items": 10}
    assert sorted(ws.items(["id"])["id"]) == sorted(f"src/{i}" for i in range(10))


def test_feature_lookups_read_only_what_is_asked_and_compaction_keeps_every_vector(tmp_path):
    store = FeatureStore(tmp_path, "x@1", 3)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, 3)).astype(np.float32)
    hashes = [f"h{i}" for i in range(400)]
    for start in range(0, 400, 10):  # 40 small runs: 40 fragments
        store.append(hashes[start:start + 10], vectors[start:start + 10], [None] * 10)
    store.append(["h7"], np.zeros((1, 3), np.float32), ["a later failure"])  # never hides the success
    picked = [f"h{i}" for i in (399, 0, 7, 123)] + ["unknown"]
    got, errors = store.lookup(picked)
    np.testing.assert_array_equal(got[:4], vectors[[399, 0, 7, 123]])
    assert errors == [None] * 4 + ["not computed"]
    assert store.missing(["h1", "nope"]).tolist() == [False, True]
    chunks = list(store.iter_lookup(hashes, 150))
    assert [len(m) for m, _ in chunks] == [150, 150, 100]
    np.testing.assert_array_equal(np.concatenate([m for m, _ in chunks]), vectors)
    metrics = store.compact()
    assert metrics["fragments_before"] == 41 and metrics["fragments_after"] == 1
    assert store.count() == 401
    np.testing.assert_array_equal(store.lookup(hashes)[0], vectors)


def test_compact_command_merges_collection_and_feature_fragments(tmp_path):
    ws = Workspace(tmp_path)
    for start in range(0, 30, 5):
        ws.add_items(frame(5, start=start))
    store = FeatureStore(ws.dir("features"), "x@1", 2)
    for start in range(0, 30, 5):
        store.append([f"{i:064x}" for i in range(start, start + 5)], np.ones((5, 2), np.float32), [None] * 5)
    out = cli("compact", "-w", tmp_path)
    assert out["collection"]["fragments_after"] == 1
    [features] = [v for k, v in out.items() if k.startswith("features/")]
    assert (features["fragments_before"], features["fragments_after"]) == (6, 1)
    assert len(ws.items()) == 30 and store.count() == 30


def test_a_create_killed_before_its_first_commit_is_not_a_table(tmp_path):
    store = FeatureStore(tmp_path, "x@1", 2)
    (store.table_path / "data").mkdir(parents=True)
    (store.table_path / "_versions").mkdir()
    (store.table_path / "data" / "orphan.lance").write_bytes(b"half")
    assert store.count() == 0 and store.missing(["a"]).tolist() == [True]
    store.append(["a"], np.ones((1, 2), np.float32), [None])
    assert store.lookup(["a"])[1] == [None]
    shutil.rmtree(store.path)
    assert store.count() == 0


def test_kill_9_during_compaction_loses_no_vector(tmp_path):
    """Compaction copies fragments and commits once: killed at any moment, the table still holds every row,
    and a rerun finishes the merge."""
    import signal
    import subprocess
    import sys
    import time

    store = FeatureStore(tmp_path, "x@1", 256)
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((120 * 1000, 256)).astype(np.float32)
    hashes = [f"h{i}" for i in range(len(vectors))]
    for start in range(0, len(vectors), 1000):
        store.append(hashes[start:start + 1000], vectors[start:start + 1000], [None] * 1000)
    script = ("import sys, time; from pathlib import Path; from curata.features.store import FeatureStore; "
              "s = FeatureStore(Path(sys.argv[1]), 'x@1', 256); s.count(); print('go', flush=True); "
              "t = time.perf_counter(); s.compact(); print(time.perf_counter() - t, flush=True)")
    for delay in (0.05, 0.3):  # killed early in the rewrite, then later
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "go"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        finished = proc.stdout.read()
        proc.wait()
        assert finished == "", f"compaction finished in {finished} s before the kill: make the table larger"
        assert store.count() == len(vectors)
        np.testing.assert_array_equal(store.lookup(hashes[::97])[0], vectors[::97])
    metrics = store.compact()
    assert metrics["fragments_after"] == 1 and store.count() == len(vectors)
    np.testing.assert_array_equal(store.lookup(hashes[::7])[0], vectors[::7])


@pytest.mark.parametrize("command", [["compact"], ["rollback", "1"], ["repair"]])
def test_upkeep_commands_convert_a_pre_lance_workspace_without_deadlock(tmp_path, command):
    """The conversion takes the workspace lock; a command that holds the lock must not convert inside it."""
    import subprocess
    import sys

    write_pre_lance_workspace(tmp_path / "ws")
    proc = subprocess.run([sys.executable, "-m", "curata.cli", *command, "-w", str(tmp_path / "ws"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(Workspace(tmp_path / "ws").items(["id"])) == 40
