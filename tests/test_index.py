"""The persistent vector index: exactness, incremental add/remove, filters, persistence, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curata.search.index import IndexErrorBadInput, VectorIndex

FIELDS = ("collection", "label", "split")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    """Vectors around a few dozen centres (the same ones for every seed, so queries made with another
    seed come from the same distribution): the structure real embeddings have."""
    c = np.random.default_rng(12345 + d).standard_normal((centres, d))
    rng = np.random.default_rng(seed)
    return unit(c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d)))


def make_meta(n: int) -> dict[str, list[str]]:
    return {"collection": [f"c{i % 3}" for i in range(n)], "label": [f"l{i % 5}" for i in range(n)],
            "split": ["test" if i % 4 == 0 else "train" for i in range(n)]}


def brute(x: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> list[list[str]]:
    s = q @ x.T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in s]


def recall(got: list[list[tuple[str, float]]], want: list[list[str]]) -> float:
    return float(np.mean([len({i for i, _ in g} & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    x = clustered(600, 24, seed=1)
    q = clustered(25, 24, seed=2)
    return [f"item/{i}" for i in range(len(x))], x, q


# Exactness --------------------------------------------------------------------------------------
def test_flat_equals_brute_force_numpy(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="flat")
    index.add(ids, x)
    got = index.search(q, 10)
    want = brute(x, ids, q, 10)
    assert [[i for i, _ in row] for row in got] == want
    scores = np.array([[s for _, s in row] for row in got])
    np.testing.assert_allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first
    everything = index.search(q[:1], 10_000)[0]  # k > len: all there are
    assert len(everything) == len(ids) and {i for i, _ in everything} == set(ids)


def test_vectors_are_normalised_unless_asked_not_to(data):
    ids, x, q = data
    scaled = x * np.linspace(0.5, 4, len(x), dtype=np.float32)[:, None]
    cosine = VectorIndex.create(24, kind="flat")
    cosine.add(ids, scaled)
    assert [[i for i, _ in r] for r in cosine.search(q * 3, 5)] == brute(x, ids, q, 5)
    np.testing.assert_allclose(cosine.get(ids[:3]), x[:3], atol=1e-6)
    raw = VectorIndex.create(24, kind="flat", normalize=False)
    raw.add(ids, scaled)
    assert [[i for i, _ in r] for r in raw.search(q, 5)] == brute(scaled, ids, q, 5)


# Incremental add / remove ----------------------------------------------------------------------
def test_flat_remove_and_readd_without_rebuild(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="flat")
    index.add(ids, x)
    structure = index.faiss_index
    assert structure.ntotal == 600
    top = [i for i, _ in index.search(q[:1], 5)[0]]
    assert index.remove([*top, "never-added"]) == 5
    assert index.faiss_index is structure and structure.ntotal == 595 and len(index) == 595
    assert top[0] not in index
    hits = [i for i, _ in index.search(q[:1], 600)[0]]
    assert len(hits) == 595 and not set(top) & set(hits)
    index.add([top[0]], q[:1])  # re-added with the query itself as its vector: now the best match
    assert index.faiss_index is structure and structure.ntotal == 596
    best, score = index.search(q[:1], 1)[0][0]
    assert best == top[0] and score == pytest.approx(1.0, abs=1e-5)
    index.add([top[0]], x[int(top[0].split("/")[1])])  # replacing an existing id keeps one copy
    assert len(index) == 596 and structure.ntotal == 596
    assert index.remove([]) == 0


def test_hnsw_remove_uses_tombstones_and_replaces_on_readd(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="hnsw")
    index.add(ids, x)
    structure = index.faiss_index
    top = [i for i, _ in index.search(q[:1], 5)[0]]
    assert index.remove(top) == 5
    assert index.faiss_index is structure and structure.ntotal == 600  # graph untouched
    assert index.tombstones == 5 and len(index) == 595
    hits = [i for i, _ in index.search(q[:1], 1000)[0]]
    assert len(hits) == 595 and not set(top) & set(hits)  # k > live count: every live item, no tombstone
    index.add([top[0]], q[:1])
    assert structure.ntotal == 601 and index.tombstones == 5 and len(index) == 596
    assert index.search(q[:1], 1)[0][0][0] == top[0]
    index.add([top[0]], x[:1])  # replace again: the previous slot becomes a tombstone
    assert structure.ntotal == 602 and index.tombstones == 6
    np.testing.assert_allclose(index.get([top[0]])[0], x[0], atol=1e-6)
    before = index.search(q, 10)
    index.compact()
    assert index.tombstones == 0 and index.faiss_index.ntotal == 596
    after = index.search(q, 10)
    assert recall(after, [[i for i, _ in r] for r in before]) >= 0.97


def test_ivfpq_removes_physically_and_reranks_exactly(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="ivfpq", train_min=300)
    index.add(ids[:200], x[:200])
    assert not index.trained and index.faiss_index is None  # searched exactly until train_min
    assert [[i for i, _ in r] for r in index.search(q, 5)] == brute(x[:200], ids[:200], q, 5)
    index.add(ids[200:], x[200:])
    assert index.trained
    structure = index.faiss_index
    assert structure.ntotal == 600
    assert index.remove(ids[:50]) == 50
    assert index.faiss_index is structure and structure.ntotal == 550
    got = index.search(q, 10)
    assert recall(got, brute(x[50:], ids[50:], q, 10)) >= 0.95
    exact = q @ x.T
    for row, qi in zip(got, range(len(q)), strict=True):  # scores are exact inner products, not PQ ones
        for item, score in row:
            assert score == pytest.approx(exact[qi, int(item.split("/")[1])], abs=1e-5)


# Filters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_filters_rank_only_matching_items(data, kind):
    ids, x, q = data
    meta = make_meta(len(ids))
    extra = {"train_min": 300} if kind == "ivfpq" else {}
    index = VectorIndex.create(24, kind=kind, exact_limit=1, **extra)  # exact_limit=1: the filtered ANN path
    index.add(ids, x, meta)
    cases = [({"label": "l2"}, lambda i: meta["label"][i] == "l2"),
             ({"collection": ["c0", "c1"]}, lambda i: meta["collection"][i] in ("c0", "c1")),
             ({"split": "test", "collection": "c2"},
              lambda i: meta["split"][i] == "test" and meta["collection"][i] == "c2")]
    for filters, keep in cases:
        rows = [i for i in range(len(ids)) if keep(i)]
        got = index.search(q, 10, filters=filters)
        assert all(len(r) == 10 for r in got)  # never fewer than k while more items match
        assert all(keep(int(i.split("/")[1])) for r in got for i, _ in r)
        assert recall(got, brute(x[rows], [ids[i] for i in rows], q, 10)) >= 0.95
    small = index.search(q[:1], 100, filters={"split": "test", "collection": "c2", "label": "l0"})[0]
    n_small = sum(1 for i in range(len(ids)) if meta["split"][i] == "test" and meta["collection"][i] == "c2"
                  and meta["label"][i] == "l0")
    assert len(small) == n_small  # k beyond the matches: all of them
    assert index.search(q[:2], 5, filters={"label": "no-such-label"}) == [[], []]


def test_filters_follow_removal_and_items_without_a_field(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="hnsw")
    index.add(ids[:300], x[:300], {"label": ["a"] * 300})
    index.add(ids[300:], x[300:])  # no label at all
    index.remove(ids[:100])
    got = index.search(q, 300, filters={"label": "a"})
    assert all(len(r) == 200 for r in got)
    assert {i for i, _ in got[0]} == set(ids[100:300])
    with pytest.raises(IndexErrorBadInput, match=r"unknown filter field 'colour'.*label"):
        index.search(q, 5, filters={"colour": "red"})
    with pytest.raises(IndexErrorBadInput, match="string or a list of strings"):
        index.search(q, 5, filters={"label": 3})


# Persistence -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(data, tmp_path, kind):
    ids, x, q = data
    card = {"encoder": "effnet_lite0", "version": "v1", "dim": 24}
    index = VectorIndex.create(24, kind=kind, card=card, **({"train_min": 300} if kind == "ivfpq" else {}))
    index.add(ids, x, make_meta(len(ids)))
    index.remove(ids[10:20])
    index.tune(ef_search=64, rerank=128)
    folder = tmp_path / "nested" / "index"
    index.save(folder)
    loaded = VectorIndex.load(folder)
    assert loaded.card == card and loaded.kind == kind and len(loaded) == 590
    assert loaded.tombstones == index.tombstones and loaded.params == index.params
    assert ids[15] not in loaded and ids[25] in loaded
    assert loaded.search(q, 10) == index.search(q, 10)
    assert loaded.search(q, 7, filters={"label": ["l1", "l3"]}) == index.search(q, 7, filters={"label": ["l1", "l3"]})
    np.testing.assert_array_equal(loaded.get(ids[30:40]), index.get(ids[30:40]))
    loaded.add(["new"], q[:1], {"label": ["l9"]})  # still incremental after loading
    assert loaded.search(q[:1], 1, filters={"label": "l9"})[0][0][0] == "new"
    loaded.save(folder)  # replacing an existing index
    assert len(VectorIndex.load(folder)) == 591
    assert sorted(p.name for p in folder.parent.iterdir()) == ["index"]  # no temporary folders left


def test_load_and_save_errors(data, tmp_path):
    ids, x, _ = data
    with pytest.raises(IndexErrorBadInput, match="no vector index"):
        VectorIndex.load(tmp_path / "missing")
    index = VectorIndex.create(24, kind="flat")
    index.add(ids, x)
    folder = tmp_path / "ix"
    index.save(folder)
    (folder / "index.faiss").write_bytes((folder / "index.faiss").read_bytes()[:100])
    with pytest.raises(IndexErrorBadInput, match="corrupt vector index"):
        VectorIndex.load(folder)
    index.save(folder)
    state = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**state, "count": 3}))
    with pytest.raises(IndexErrorBadInput, match="corrupt vector index"):
        VectorIndex.load(folder)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(IndexErrorBadInput, match="corrupt vector index"):
        VectorIndex.load(folder)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    with pytest.raises(IndexErrorBadInput, match="not a vector index folder"):
        index.save(other)
    assert (other / "keep.jpg").exists()
    with pytest.raises(IndexErrorBadInput, match="JSON"):
        VectorIndex.create(24, kind="flat", card={"bad": object()}).save(tmp_path / "c")


# Auto ------------------------------------------------------------------------------------------
def test_auto_switches_from_flat_to_hnsw_once(data):
    ids, x, q = data
    meta = make_meta(len(ids))
    index = VectorIndex.create(24, kind="auto", threshold=400)
    index.add(ids[:300], x[:300], {k: v[:300] for k, v in meta.items()})
    assert index.kind == "flat"
    index.remove(ids[:5])
    index.add(ids[300:], x[300:], {k: v[300:] for k, v in meta.items()})  # crosses the threshold
    assert index.kind == "hnsw" and index.requested_kind == "auto"
    assert len(index) == 595 and index.tombstones == 0 and index.faiss_index.ntotal == 595
    structure = index.faiss_index
    index.add(["extra"], q[:1])
    assert index.faiss_index is structure  # no second rebuild
    assert recall(index.search(q, 10), brute(np.vstack([x[5:], q[:1]]), [*ids[5:], "extra"], q, 10)) >= 0.95
    got = index.search(q, 5, filters={"label": "l4"})
    assert all(meta["label"][int(i.split("/")[1])] == "l4" for r in got for i, _ in r)


# Bad input -------------------------------------------------------------------------------------
def test_bad_input_is_reported_clearly(data):
    ids, x, q = data
    index = VectorIndex.create(24, kind="flat")
    with pytest.raises(IndexErrorBadInput, match="dimension 23, the index has 24"):
        index.add(ids[:2], x[:2, :23])
    with pytest.raises(IndexErrorBadInput, match="nothing to add"):
        index.add([], np.zeros((0, 24), np.float32))
    bad = x[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(IndexErrorBadInput, match=r"row 1 \(id 'item/1'\) contains NaN"):
        index.add(ids[:3], bad)
    with pytest.raises(IndexErrorBadInput, match=r"duplicate id.*item/0"):
        index.add([ids[0], ids[0]], x[:2])
    with pytest.raises(IndexErrorBadInput, match="3 ids but 2 vector rows"):
        index.add(ids[:3], x[:2])
    with pytest.raises(IndexErrorBadInput, match="all zeros"):
        index.add(ids[:1], np.zeros((1, 24), np.float32))
    with pytest.raises(IndexErrorBadInput, match="non-empty strings"):
        index.add([1, 2], x[:2])
    with pytest.raises(IndexErrorBadInput, match="one value per id"):
        index.add(ids[:2], x[:2], {"label": ["a"]})
    assert len(index) == 0  # nothing half-added
    index.add(ids, x)
    for k in (0, -1, True, 2.5):
        with pytest.raises(IndexErrorBadInput, match="k must be a positive integer"):
            index.search(q, k)
    with pytest.raises(IndexErrorBadInput, match="dimension 8"):
        index.search(np.ones((1, 8), np.float32))
    with pytest.raises(IndexErrorBadInput, match="empty"):
        index.search(np.zeros((0, 24), np.float32))
    with pytest.raises(IndexErrorBadInput, match="NaN"):
        index.search(np.full((1, 24), np.nan, np.float32))
    with pytest.raises(IndexErrorBadInput, match="unknown filter field 'label'; known fields: none"):
        index.search(q, 5, filters={"label": "x"})
    with pytest.raises(IndexErrorBadInput, match=r"not in the index.*'nope'"):
        index.get(["nope"])
    with pytest.raises(IndexErrorBadInput, match="unknown index kind"):
        VectorIndex.create(24, kind="lsh")
    with pytest.raises(IndexErrorBadInput, match=r"unknown parameter.*nprobe"):
        VectorIndex.create(24, kind="hnsw", nprobe=3)
    with pytest.raises(IndexErrorBadInput, match="dim must be a positive integer"):
        VectorIndex.create(0)
    with pytest.raises(IndexErrorBadInput, match="tunable"):
        index.tune(m=3)
    assert issubclass(IndexErrorBadInput, ValueError)
    assert VectorIndex.create(4).search(np.ones((2, 4), np.float32), 3) == [[], []]  # empty index: no hits


# Approximate kinds at a few thousand vectors ------------------------------------------------------
@pytest.fixture(scope="module")
def bigger() -> tuple[list[str], np.ndarray, np.ndarray]:
    x = clustered(4000, 48, seed=3, centres=80)
    q = clustered(100, 48, seed=4, centres=80)
    return [f"b{i}" for i in range(len(x))], x, q


def test_hnsw_recall_on_thousands(bigger):
    ids, x, q = bigger
    index = VectorIndex.create(48, kind="hnsw", m=16, ef_construction=80)
    index.add(ids, x)
    assert recall(index.search(q, 10), brute(x, ids, q, 10)) >= 0.95
    index.tune(ef_search=10)
    low = recall(index.search(q, 10), brute(x, ids, q, 10))
    assert low <= 1.0  # a narrow beam still answers k per query
    assert all(len(r) == 10 for r in index.search(q, 10))


@pytest.mark.parametrize("nbits", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_ivfpq_recall_on_thousands(bigger, nbits):
    ids, x, q = bigger
    index = VectorIndex.create(48, kind="ivfpq", train_min=1000, nbits=nbits)
    index.add(ids, x)
    assert index.trained and index.params["nlist"] >= 16
    assert recall(index.search(q, 10), brute(x, ids, q, 10)) >= 0.95
    index.tune(rerank=10, nprobe=1)  # fewer candidates: still k answers per query (exact fallback if short)
    assert all(len(r) == 10 for r in index.search(q, 10))


def test_ivfpq_scan_without_residuals_splits_one_query_over_the_cores(monkeypatch, tmp_path):
    """residual=False with every list probed: a compressed scan of all vectors, re-ranked exactly.
    A single query over enough codes takes the list-parallel path, which must return what the
    per-query path returns; the setting survives save/load."""
    import curata.search.index as index_module

    rng = np.random.default_rng(7)
    x, q = unit(rng.standard_normal((6000, 32))), unit(rng.standard_normal((40, 32)))
    ids = [f"r{i}" for i in range(len(x))]
    index = VectorIndex.create(32, kind="ivfpq", train_min=1000, nlist=2, nprobe=2, residual=False, exact_limit=1)
    index.add(ids, x, {"label": [f"l{i % 3}" for i in range(len(x))]})
    assert not index.faiss_index.by_residual
    want = brute(x, ids, q, 10)
    serial = [index.search(q[i:i + 1], 10)[0] for i in range(len(q))]
    filtered = index.search(q[:5], 10, filters={"label": "l1"})
    assert recall(serial, want) >= 0.95  # uniform random vectors: the hard case for lists
    monkeypatch.setattr(index_module, "_PARALLEL_SCAN", 1)
    parallel = [index.search(q[i:i + 1], 10)[0] for i in range(len(q))]
    assert [[i for i, _ in r] for r in parallel] == [[i for i, _ in r] for r in serial]
    assert index.search(q[:5], 10, filters={"label": "l1"}) == filtered  # the selector works there too
    assert index.faiss_index.implem == 0  # the switch is undone after the search
    index.save(tmp_path / "scan")
    loaded = VectorIndex.load(tmp_path / "scan")
    assert loaded.params["residual"] is False and not loaded.faiss_index.by_residual
    assert [[i for i, _ in r] for r in loaded.search(q[:5], 10)] == [[i for i, _ in r] for r in serial[:5]]
