"""The feature store's hash runs: planning answers "not stored" without the table's index, and never wrongly
says "stored" (a key the runs hold is checked in the table)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from curata.features import hash_filter
from curata.features.hash_filter import HashFilter
from curata.features.store import FeatureStore, write_fragments


def h(i: int) -> str:
    return f"{i:064x}"


def vectors(n: int, dim: int = 4) -> np.ndarray:
    return np.arange(n * dim, dtype=np.float32).reshape(n, dim)


def test_runs_answer_for_what_they_hold_and_merge_without_losing_a_key(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_filter, "MAX_RUNS", 3)
    runs = HashFilter(tmp_path)
    runs.add([h(i) for i in range(10)])
    assert runs.contains([h(1)]) is None  # not complete yet: the table must answer
    runs.build([h(i) for i in range(10, 20)])
    for start in range(20, 60, 10):  # four more writes: merged past three runs
        runs.add([h(i) for i in range(start, start + 10)])
    assert len(list((tmp_path / hash_filter.FOLDER).glob("run-*.npy"))) <= 3
    found = runs.contains([h(i) for i in range(70)])
    assert found is not None and found[:60].all() and not found[60:].any()


def test_a_damaged_run_hands_the_question_back_to_the_table_and_blocks_no_write(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_filter, "MAX_RUNS", 2)
    runs = HashFilter(tmp_path)
    runs.build([h(1)])
    next((tmp_path / hash_filter.FOLDER).glob("run-*.npy")).write_bytes(b"")  # a run a power cut emptied
    assert runs.contains([h(1)]) is None
    for i in range(2, 5):  # past MAX_RUNS: the merge meets the damaged run and leaves it for the rebuild
        runs.add([h(i)])
    assert runs.contains([h(2)]) is None and not runs.readable()
    runs.build([h(1)])
    assert runs.readable() and runs.contains([h(1), h(4), h(9)]).tolist() == [True, True, False]


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    store = FeatureStore(tmp_path / "features", "fake@1", 4)
    store.append([h(i) for i in range(400)], vectors(400), [None] * 18 + ["decode error"] * 2 + [None] * 380)
    return store


def test_missing_asks_the_index_only_about_hashes_the_runs_hold(store, monkeypatch):
    asked: list[int] = []
    probe = FeatureStore._computed

    def counting(self, dataset, among=None, scan=True):
        asked.append(-1 if among is None else len(among))
        return probe(self, dataset, among, scan)

    monkeypatch.setattr(FeatureStore, "_computed", counting)
    wanted = [h(i) for i in range(15, 20)] + [h(i) for i in range(1000, 1020)]  # 3 stored, 2 failed, 20 new
    missing = store.missing(wanted)
    assert missing.tolist() == [False] * 3 + [True] * 22
    assert asked == [3]  # the failed and the new hashes never reach the index
    (store.path / hash_filter.FOLDER / hash_filter.COMPLETE).unlink()  # as a store written before the runs
    asked.clear()
    assert store.missing(wanted).tolist() == missing.tolist()
    assert asked == [-1]  # one scan builds the runs, and answers
    asked.clear()
    assert store.missing(wanted).tolist() == missing.tolist() and asked == [3]
    asked.clear()
    assert store.missing([h(i) for i in range(2000, 2090)]).all() and asked == [0]
    asked.clear()
    assert store.missing([h(i) for i in range(300)]).sum() == 2 and asked == [-1]  # most of the store: a scan
    asked.clear()
    # Without scans (the Ray driver's windows): the runs, then index probes, as large as the question only.
    assert store.missing([h(i) for i in range(300)], scan=False).sum() == 2 and asked == [298]
    (store.path / hash_filter.FOLDER / hash_filter.COMPLETE).unlink()
    asked.clear()
    assert store.missing(wanted, scan=False).tolist() == missing.tolist() and asked == [25]


def test_a_key_the_runs_hold_without_a_row_is_still_missing(store):
    store.hash_filter.add([h(500)])  # a write killed after recording its hashes, before its commit
    assert store.missing([h(500), h(1)]).tolist() == [True, False]


def test_runs_lost_or_damaged_change_no_answer(store):
    expected = store.missing([h(i) for i in range(30)])
    shutil.rmtree(store.path / hash_filter.FOLDER)
    assert store.missing([h(i) for i in range(30)]).tolist() == expected.tolist()  # rebuilt from a scan
    assert store.hash_filter.readable()
    for run in (store.path / hash_filter.FOLDER).glob("run-*.npy"):
        run.write_bytes(b"\0" * 7)
    assert not store.hash_filter.readable()
    assert store.missing([h(i) for i in range(30)]).tolist() == expected.tolist()
    assert store.hash_filter.readable()  # the damaged run dropped, the runs built again


def test_fragments_written_by_workers_record_their_hashes(store):
    target = store.fragment_target()
    written = write_fragments(target, [h(5000), h(5001)], vectors(2), [None, "timeout"], 4)
    store.commit_fragments(written)
    assert store.hash_filter.contains([h(5000), h(5001)]).tolist() == [True, False]
    assert store.missing([h(5000), h(5001)]).tolist() == [False, True]


def test_index_deltas_are_merged_once_they_hold_a_quarter_of_the_main_segment(tmp_path):
    store = FeatureStore(tmp_path / "features", "fake@1", 4)

    def segments() -> int:
        return next(len(i.segments) for i in store._dataset().describe_indices())

    store.append([h(i) for i in range(1000)], vectors(1000), [None] * 1000)
    store.finish()
    store.append([h(i) for i in range(1000, 1100)], vectors(100), [None] * 100)
    store.finish()
    assert segments() == 2  # a delta of 100 rows: a tenth of the main segment
    store.append([h(i) for i in range(1100, 1300)], vectors(200), [None] * 200)
    store.finish()
    assert segments() == 1  # 300 rows of deltas: merged
    got, errors = store.lookup([h(5), h(1050), h(1299)])
    assert errors == [None] * 3 and got[1].tolist() == vectors(100)[50].tolist()
