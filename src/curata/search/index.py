"""A persistent inner-product vector index over string item ids, on FAISS.

Scores are inner products; with `normalize=True` (the default) vectors and queries are L2-normalised,
so scores are cosine similarities. Kinds:

  flat    exact search (`IDMap2,Flat`); deletes physically remove rows.
  hnsw    graph search (`HNSW<M>,Flat`). FAISS cannot delete from a graph, so a removed (or replaced)
          id becomes a tombstone: its slot stays in the graph and an ID selector excludes it at search
          time. `compact()` rebuilds without tombstones when many have piled up.
  ivfpq   inverted lists of product-quantised codes (4-bit fast-scan PQ by default), whose candidates
          are re-ranked exactly against the stored float vectors, so recall stays high. Trained once,
          on the vectors present when the index first reaches `train_min` items (searched exactly
          until then); deletes remove codes physically.
  auto    flat below `threshold` items (default 50,000), hnsw above: the add() that crosses the
          threshold rebuilds the index once as HNSW (that one call takes the graph-building time).

Every item has an int64 *slot*, the id FAISS knows; slots are never reused, so metadata filters and
tombstones are one bitmap over slots, passed to FAISS as an `IDSelectorBitmap`. Filtered searches
therefore rank only matching items (no post-filtering that could return fewer than k), and a filter
matching few items is answered exactly over those items, which is both faster and complete.

On disk (`save`/`load`) the index is a folder: `index.faiss` (+ `store.faiss`, the exact vectors of
an ivfpq index), `items.parquet` (id, slot, metadata fields) and `index.json` (kind, parameters,
the caller's card); it is written to a staging folder and renamed into place (`curata.atomic`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from curata.atomic import folder_view, replace_folder
from curata.storage import location

FORMAT = "curata-vector-index/1"
KINDS = ("auto", "flat", "hnsw", "ivfpq")
AUTO_THRESHOLD = 50_000
DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 128, "ef_search": 128},
    # nlist/m None: chosen from the data at training time; nprobe None: nlist // 8 (at least 8).
    "ivfpq": {"nlist": None, "m": None, "nbits": 4, "nprobe": None, "rerank": 256, "train_min": 10_000,
              "residual": True},
}
# exact_limit None: 2,000,000 / dim items (~8k at 256-d, ~1.5k at 1280-d): a brute-force scan of ~1 ms
COMMON = {"normalize": True, "threshold": AUTO_THRESHOLD, "exact_limit": None}
SEARCH_PARAMS = ("ef_search", "nprobe", "rerank", "exact_limit")
_CHUNK = 65_536  # rows moved at once when rebuilding or training: bounds the extra memory


class IndexErrorBadInput(ValueError):
    """Bad input to the vector index (wrong dimension, NaN, duplicate ids, unknown filter field,
    missing or corrupt index folder, ...). A ValueError, so the CLI reports it with exit code 2."""


IndexInputError = IndexErrorBadInput  # shorter alias


@cache
def available_cores() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup CPU quota if there is one.
    Read once: a search asks on every query, and reading the cgroup file cost ~0.3 ms each time."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


_PARALLEL_ROWS = 20_000  # below this many rows (or 16 queries) FAISS runs on one thread
_PARALLEL_SCAN = 200_000  # a single ivfpq query scanning this many codes splits its lists over the cores


def max_threads() -> int:
    return int(os.environ.get("CURATA_THREADS") or 0) or available_cores()


@contextmanager
def _threads(work: int, at_least: int = _PARALLEL_ROWS) -> Iterator[None]:
    """OpenMP threads for one FAISS call: the usable cores for big work, one thread for small work.
    On a busy 2-core box an OpenMP barrier waits for a descheduled thread, so parallel k-means on a
    few thousand points was measured 25x slower than on one thread; and FAISS's default, every CPU
    the machine reports, oversubscribes a container with a CPU quota. CURATA_THREADS caps it."""
    wanted = max_threads() if work >= at_least else 1
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(wanted)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _largest_divisor(d: int, at_most: int) -> int:
    return max(m for m in range(1, max(1, at_most) + 1) if d % m == 0)


class _Field:
    """One metadata field: the distinct values and, per slot, the code of its value (-1 = none)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.code_of: dict[str, int] = {}
        self.codes = np.full(0, -1, dtype=np.int32)

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int32)
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out[i] = -1
                continue
            text = str(value)
            code = self.code_of.get(text)
            if code is None:
                code = self.code_of[text] = len(self.values)
                self.values.append(text)
            out[i] = code
        return out


class VectorIndex:
    """Inner-product (cosine on L2-normalised vectors) index over item ids, persistent in a folder.

    Create with `VectorIndex.create(dim, kind=...)`, open with `VectorIndex.load(folder)`."""

    def __init__(self, dim: int, kind: str, params: dict[str, Any], card: dict[str, Any]):
        self.dim = dim
        self.requested_kind = kind
        self.params = params
        self.card = card
        self.kind = "flat" if kind == "auto" else kind  # the structure in use now
        self._ids: list[str | None] = []  # slot -> id (None: removed)
        self._slot: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._fields: dict[str, _Field] = {}
        self._index: faiss.Index | None = None
        self._store: faiss.Index | None = None  # ivfpq only: the exact vectors, by slot
        self._selectors: dict[Any, tuple[Any, int]] = {}
        self._new_structure()

    # Construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, *, kind: str = "auto", card: dict | None = None, **params: Any) -> VectorIndex:
        """A new empty index. Parameters (all optional): `normalize` (True), `exact_limit` (filtered
        searches matching at most this many items are answered exactly; 2,000,000 / dim); hnsw: `m` (32),
        `ef_construction` (128), `ef_search` (128); ivfpq: `nlist`, `m` (sub-quantisers), `nbits`
        (4 = fast-scan, 8), `nprobe`, `rerank` (candidates re-ranked exactly, 256), `train_min`
        (10,000), `residual` (True: codes encode each vector's offset from its list centroid; False:
        the vector itself, scored by inner product, for data the lists cannot separate); auto:
        `threshold` (50,000) plus the hnsw ones."""
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim <= 0:
            raise IndexErrorBadInput(f"dim must be a positive integer, got {dim!r}")
        if kind not in KINDS:
            raise IndexErrorBadInput(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
        known = dict(COMMON)
        for name in ({"flat", "hnsw"} if kind == "auto" else {kind}):
            known.update(DEFAULTS[name])
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise IndexErrorBadInput(f"unknown parameter(s) {', '.join(unknown)} for a {kind} index; "
                                  f"known: {', '.join(sorted(known))}")
        known.update(params)
        if known["exact_limit"] is None:
            known["exact_limit"] = max(1000, 2_000_000 // int(dim))
        return cls(int(dim), kind, known, dict(card or {}))

    def _new_structure(self) -> None:
        metric = faiss.METRIC_INNER_PRODUCT
        self._store = None
        if self.kind == "flat":
            self._index = faiss.index_factory(self.dim, "IDMap2,Flat", metric)
        elif self.kind == "hnsw":
            self._index = faiss.index_factory(self.dim, f"HNSW{int(self.params['m'])},Flat", metric)
            self._index.hnsw.efConstruction = int(self.params["ef_construction"])
        else:  # ivfpq: the quantised index is made at training time; the exact store from the start
            self._index = None
            self._store = faiss.index_factory(self.dim, "IDMap2,Flat", metric)

    # Sizes ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, id: object) -> bool:
        return id in self._slot

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The FAISS structure searched (None for an ivfpq index not trained yet)."""
        return self._index

    @property
    def tombstones(self) -> int:
        """Removed items still inside the structure (hnsw only; flat and ivfpq delete physically)."""
        return len(self._ids) - len(self) if self.kind == "hnsw" else 0

    @property
    def trained(self) -> bool:
        return self.kind != "ivfpq" or self._index is not None

    @property
    def fields(self) -> list[str]:
        return sorted(self._fields)

    def ids(self) -> list[str]:
        """Every id in the index, in slot (insertion) order."""
        return [i for i in self._ids if i is not None]

    def index_bytes(self) -> int:
        """Approximate bytes held by the FAISS structures (vectors, codes, graph links, id maps)."""
        total = 0
        n_slots = len(self._ids)
        if self.kind == "flat":
            total += self._index.ntotal * (self.dim * 4 + 16)
        elif self.kind == "hnsw":
            total += n_slots * self.dim * 4 + self._index.hnsw.neighbors.size() * 4 + n_slots * 12
        else:
            total += self._store.ntotal * (self.dim * 4 + 16)
            if self._index is not None:
                ivf = faiss.extract_index_ivf(self._index)
                total += self._index.ntotal * (ivf.code_size + 8) + ivf.nlist * self.dim * 4
        return int(total + len(self._ids) * 9)  # + alive flags and filter codes (approx)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "requested_kind": self.requested_kind, "dim": self.dim, "count": len(self),
                "tombstones": self.tombstones, "trained": self.trained, "fields": self.fields,
                "params": dict(self.params), "index_bytes": self.index_bytes()}

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, count={len(self)}, tombstones={self.tombstones})"

    # Validation -------------------------------------------------------------------------------
    def _matrix(self, vectors: Any, rows: int | None, what: str, names: Sequence[str] | None = None) -> np.ndarray:
        try:
            x = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise IndexErrorBadInput(f"{what} must be a numeric array: {e}") from e
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise IndexErrorBadInput(f"{what} must be a 2-D array (rows x {self.dim}), got shape {x.shape}")
        if x.shape[0] == 0:
            raise IndexErrorBadInput(f"{what} is empty: nothing to add or search")
        if x.shape[1] != self.dim:
            raise IndexErrorBadInput(f"{what} have dimension {x.shape[1]}, the index has {self.dim}")
        if rows is not None and x.shape[0] != rows:
            raise IndexErrorBadInput(f"{rows} ids but {x.shape[0]} vector rows")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            label = f" (id {names[row]!r})" if names is not None else ""
            raise IndexErrorBadInput(f"{what} row {row}{label} contains NaN or infinity "
                                  f"({int((~finite).sum())} bad row(s) in all)")
        x = np.ascontiguousarray(x)
        if self.params["normalize"]:
            norms = np.linalg.norm(x, axis=1)
            if (norms == 0).any():
                row = int(np.flatnonzero(norms == 0)[0])
                label = f" (id {names[row]!r})" if names is not None else ""
                raise IndexErrorBadInput(f"{what} row {row}{label} is all zeros and cannot be normalised")
            x = x / norms[:, None]
        return x.astype(np.float32, copy=False)

    @staticmethod
    def _check_ids(ids: Any) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, Sequence | np.ndarray | pd.Index | pd.Series):
            raise IndexErrorBadInput("ids must be a list of strings")
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise IndexErrorBadInput(f"ids must be non-empty strings; got {bad[0]!r}")
        return ids

    # Mutation ---------------------------------------------------------------------------------
    def add(self, ids: list[str], vectors: np.ndarray, meta: dict[str, list[str]] | None = None) -> None:
        """Add items; an id already in the index is replaced (vector and metadata). `meta` maps a
        filter field (collection, label, split, ...) to one value per id (None: no value)."""
        ids = self._check_ids(ids)
        if not ids:
            raise IndexErrorBadInput("no ids given: nothing to add")
        seen: set[str] = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)})
        if dups:
            raise IndexErrorBadInput(f"duplicate id(s) in one add() call: {', '.join(dups[:5])}"
                                  + (f" and {len(dups) - 5} more" if len(dups) > 5 else ""))
        x = self._matrix(vectors, len(ids), "vectors", ids)
        meta = dict(meta or {})
        for field, values in meta.items():
            if not isinstance(field, str) or not field:
                raise IndexErrorBadInput(f"metadata field names must be non-empty strings, got {field!r}")
            if isinstance(values, str) or len(values) != len(ids):
                raise IndexErrorBadInput(f"metadata field {field!r} needs one value per id ({len(ids)}), "
                                      f"got {1 if isinstance(values, str) else len(values)}")
        self._remove_slots([self._slot[i] for i in ids if i in self._slot])
        if self.requested_kind == "auto" and self.kind == "flat" and len(self) + len(ids) > self.params["threshold"]:
            self._rebuild("hnsw")
        self._append(ids, x, meta)

    def _append(self, ids: list[str], x: np.ndarray, meta: Mapping[str, Sequence[Any]]) -> None:
        first = len(self._ids)
        slots = np.arange(first, first + len(ids), dtype=np.int64)
        # HNSW insertion is the one costly add, parallel from a few hundred rows on
        with _threads(len(ids), 512 if self.kind == "hnsw" else _PARALLEL_ROWS):
            if self.kind == "flat":
                self._index.add_with_ids(x, slots)
            elif self.kind == "hnsw":
                if self._index.ntotal != first:  # slots are graph positions: they must stay in step
                    raise RuntimeError(f"hnsw index out of step: {self._index.ntotal} vectors, {first} slots")
                self._index.add(x)
            else:
                self._store.add_with_ids(x, slots)
                if self._index is not None:
                    self._index.add_with_ids(x, slots)
        self._ids.extend(ids)
        for id_, slot in zip(ids, slots.tolist(), strict=True):
            self._slot[id_] = slot
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        for name, field in self._fields.items():
            codes = field.encode(meta[name]) if name in meta else np.full(len(ids), -1, dtype=np.int32)
            field.codes = np.concatenate([field.codes, codes])
        for name in meta:
            if name not in self._fields:
                field = self._fields[name] = _Field()
                field.codes = np.concatenate([np.full(first, -1, dtype=np.int32), field.encode(meta[name])])
        self._selectors.clear()
        if self.kind == "ivfpq" and self._index is None and len(self) >= self.params["train_min"]:
            self._train()

    def remove(self, ids: list[str]) -> int:
        """Remove items by id, without rebuilding; unknown ids are ignored. Returns how many were removed."""
        ids = self._check_ids(ids)
        slots = sorted({self._slot[i] for i in ids if i in self._slot})
        self._remove_slots(slots)
        return len(slots)

    def _remove_slots(self, slots: list[int]) -> None:
        if not slots:
            return
        arr = np.asarray(slots, dtype=np.int64)
        with _threads(len(self)):
            if self.kind == "flat":
                self._index.remove_ids(faiss.IDSelectorBatch(arr))
            elif self.kind == "ivfpq":
                self._store.remove_ids(faiss.IDSelectorBatch(arr))
                if self._index is not None:
                    self._index.remove_ids(faiss.IDSelectorBatch(arr))
        # hnsw: the slot stays in the graph as a tombstone, excluded by the selector at search time
        for slot in slots:
            del self._slot[self._ids[slot]]
            self._ids[slot] = None
        self._alive[arr] = False
        for field in self._fields.values():
            field.codes[arr] = -1
        self._selectors.clear()

    def _live(self) -> tuple[list[str], dict[str, list[str | None]]]:
        slots = np.flatnonzero(self._alive)
        ids = [self._ids[s] for s in slots.tolist()]
        meta = {name: [f.values[c] if c >= 0 else None for c in f.codes[slots].tolist()]
                for name, f in self._fields.items()}
        return ids, meta

    def _rebuild(self, kind: str) -> None:
        """Re-create the structure as `kind` with the live items only (new, dense slots)."""
        ids, meta = self._live()
        vectors = self.get(ids) if ids else np.zeros((0, self.dim), np.float32)
        self.kind = kind
        self._ids, self._slot, self._alive, self._fields = [], {}, np.zeros(0, dtype=bool), {}
        self._new_structure()
        for a in range(0, len(ids), _CHUNK):
            b = a + _CHUNK
            self._append(ids[a:b], vectors[a:b], {k: v[a:b] for k, v in meta.items()})

    def compact(self) -> None:
        """Rebuild without tombstones (hnsw) and with dense slots; results are unchanged."""
        self._rebuild(self.kind)

    def tune(self, **params: Any) -> None:
        """Change search-time parameters (ef_search, nprobe, rerank, exact_limit) of this index."""
        unknown = sorted(set(params) - set(SEARCH_PARAMS))
        if unknown:
            raise IndexErrorBadInput(f"not search-time parameter(s): {', '.join(unknown)}; "
                                  f"tunable: {', '.join(SEARCH_PARAMS)}")
        for name, value in params.items():
            if value is not None and (not isinstance(value, int | np.integer) or value < 1):
                raise IndexErrorBadInput(f"{name} must be a positive integer, got {value!r}")
        self.params.update(params)

    def _train(self) -> None:
        """Train the ivfpq structure on (a sample of) the stored vectors and fill it."""
        n = self._store.ntotal
        nlist = self.params["nlist"] or max(1, min(2 ** round(math.log2(math.sqrt(n))), n // 39))
        m = self.params["m"] or _largest_divisor(self.dim, self.dim // 2 if self.dim <= 256 else self.dim // 4)
        if self.dim % m:
            raise IndexErrorBadInput(f"ivfpq m={m} must divide the dimension {self.dim}")
        nbits = int(self.params["nbits"])
        if nbits not in (4, 8):
            raise IndexErrorBadInput(f"ivfpq nbits must be 4 (fast-scan) or 8, got {nbits}")
        # "np": no polysemous training, which took minutes and serves Hamming filtering we do not use
        spec = f"IVF{nlist},PQ{m}x4fs" if nbits == 4 else f"IVF{nlist},PQ{m}x8np"
        # On unit vectors L2 ranks like inner product, and L2 k-means assigns lists better than
        # inner product with unnormalised centroids (measured: recall 0.955 vs 0.896 at nprobe=8).
        # The structure only proposes candidates; scores come from the exact re-ranking.
        metric = faiss.METRIC_L2 if self.params["normalize"] else faiss.METRIC_INNER_PRODUCT
        residual = bool(self.params.get("residual", True))
        if not residual:
            # Codes of the vectors themselves, scored by inner product: on uniform random unit vectors
            # (no structure for lists to exploit, every list scanned) recall@10 at rerank 256 was
            # 0.963 against 0.90-0.92 for residual or L2-scored codes (1M x 256-d, PQ128x4fs).
            metric = faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(self.dim, spec, metric)
        faiss.extract_index_ivf(index).by_residual = residual
        slots = np.flatnonzero(self._alive)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(slots, min(len(slots), max(50_000, 64 * nlist)), replace=False))
        with _threads(len(sample)):
            index.train(self._store.reconstruct_batch(sample))
            for a in range(0, len(slots), _CHUNK):
                part = slots[a:a + _CHUNK]
                index.add_with_ids(self._store.reconstruct_batch(part), part)
        self.params.update(nlist=nlist, m=m)
        self._index = index

    # Reading ----------------------------------------------------------------------------------
    def get(self, ids: list[str]) -> np.ndarray:
        """The stored (normalised, when `normalize`) vectors of `ids`, in order."""
        ids = self._check_ids(ids)
        missing = [i for i in ids if i not in self._slot]
        if missing:
            raise IndexErrorBadInput(f"{len(missing)} id(s) not in the index, e.g. {missing[0]!r}")
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        slots = np.fromiter((self._slot[i] for i in ids), dtype=np.int64, count=len(ids))
        return self._exact().reconstruct_batch(slots)

    def _exact(self) -> faiss.Index:
        """A FAISS index over the exact vectors whose labels are slots."""
        if self.kind == "flat":
            return self._index
        if self.kind == "hnsw":
            return faiss.downcast_index(self._index.storage)  # graph positions == slots
        return self._store

    def _selection(self, filters: Mapping[str, str | Sequence[str]] | None) -> tuple[Any, int]:
        """(IDSelectorBitmap or None, number of items it admits) for these filters plus tombstones."""
        key = None if not filters else tuple(sorted(
            (f, (v,) if isinstance(v, str) else tuple(sorted(map(str, v)))) for f, v in filters.items()))
        if key in self._selectors:
            return self._selectors[key]
        mask = None
        if key is not None:
            mask = self._alive.copy()
            for field, values in key:
                f = self._fields[field]
                codes = [f.code_of[v] for v in values if v in f.code_of]
                mask &= np.isin(f.codes, codes)
        elif self.tombstones:
            mask = self._alive
        if mask is None:
            result: tuple[Any, int] = (None, len(self))
        else:
            result = (faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little")), int(mask.sum()))
        if len(self._selectors) > 64:
            self._selectors.clear()
        self._selectors[key] = result
        return result

    def _check_filters(self, filters: Any) -> None:
        if filters is None:
            return
        if not isinstance(filters, Mapping):
            raise IndexErrorBadInput("filters must be a mapping of field -> value or list of values")
        for field, value in filters.items():
            if field not in self._fields:
                known = ", ".join(self.fields) or "none: no metadata was added"
                raise IndexErrorBadInput(f"unknown filter field {field!r}; known fields: {known}")
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, Sequence | set | frozenset) or not all(isinstance(v, str) for v in values):
                raise IndexErrorBadInput(f"filter {field!r} must be a string or a list of strings, got {value!r}")

    def search(self, queries: np.ndarray, k: int = 10, *, filters: dict[str, str | list[str]] | None = None
               ) -> list[list[tuple[str, float]]]:
        """The k best (id, score) per query row, best first; fewer only when fewer items match.
        `filters` keeps items whose field equals the value (or one of the values); several fields: all."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise IndexErrorBadInput(f"k must be a positive integer, got {k!r}")
        q = self._matrix(queries, None, "queries")
        self._check_filters(filters)
        sel, matching = self._selection(filters)
        kk = min(int(k), matching)
        if kk == 0:
            return [[] for _ in range(len(q))]
        # A filter matching few items is answered exactly: cheaper than a filtered graph walk or probe,
        # and complete. Tombstones alone never force exact search.
        approximate = (self.kind != "flat" and self.trained
                       and not (filters and matching <= self.params["exact_limit"]))
        with _threads(len(q), 16):  # one query runs on one thread whatever the setting
            if not approximate:
                scores, labels = self._search_exact(q, kk, sel)
            elif self.kind == "hnsw":
                scores, labels = self._search_hnsw(q, kk, sel, matching)
            else:
                scores, labels = self._search_ivfpq(q, kk, sel, matching)
            if approximate:  # a graph or probe miss that left a row short: answer that row exactly
                short = np.flatnonzero((labels >= 0).sum(axis=1) < kk)
                if len(short):
                    scores[short], labels[short] = self._search_exact(q[short], kk, sel)
        return [[(self._ids[s], float(d)) for s, d in zip(row_l.tolist(), row_d.tolist(), strict=True) if s >= 0]
                for row_l, row_d in zip(labels, scores, strict=True)]

    def _search_exact(self, q: np.ndarray, k: int, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        return self._exact().search(q, k, params=params)

    def _search_hnsw(self, q: np.ndarray, k: int, sel: Any, matching: int) -> tuple[np.ndarray, np.ndarray]:
        ef = max(int(self.params["ef_search"]), k)
        if sel is not None:  # a selective filter leaves fewer usable nodes on each path: widen the beam
            ef = min(ef * min(16, math.ceil(len(self._ids) / max(matching, 1))), 4096)
            ef = max(ef, k)
        params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel is not None \
            else faiss.SearchParametersHNSW(efSearch=ef)
        return self._index.search(q, k, params=params)

    def _search_ivfpq(self, q: np.ndarray, k: int, sel: Any, matching: int) -> tuple[np.ndarray, np.ndarray]:
        ivf = faiss.extract_index_ivf(self._index)
        nprobe = min(ivf.nlist, int(self.params["nprobe"] or max(8, ivf.nlist // 8)))
        if sel is not None:  # a filter thins every list: probe more of them
            nprobe = min(ivf.nlist, nprobe * min(16, math.ceil(len(self) / max(matching, 1))))
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel) if sel is not None \
            else faiss.SearchParametersIVF(nprobe=nprobe)
        r = min(max(int(self.params["rerank"]), k), matching)
        scanned = ivf.ntotal * nprobe // max(ivf.nlist, 1)
        fast_scan = isinstance(self._index, faiss.IndexIVFFastScan)
        if len(q) < 16 and scanned >= _PARALLEL_SCAN and fast_scan:
            # One query over a large scan: fast-scan implementation 14 splits the probed lists over
            # the cores (1M codes, 2 lists: 9.5 -> 5.0 ms on 2 cores); FAISS otherwise parallelises
            # over queries only, leaving one core idle for a single query.
            self._index.implem = 14
            try:
                with _threads(_PARALLEL_ROWS):
                    _, cand = self._index.search(q, r, params=params)
            finally:
                self._index.implem = 0
        else:
            _, cand = self._index.search(q, r, params=params)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        for row, (query, found) in enumerate(zip(q, cand, strict=True)):
            found = found[found >= 0]
            exact = self._store.reconstruct_batch(found) @ query  # exact re-ranking against stored floats
            best = np.argsort(-exact, kind="stable")[:k]
            scores[row, :len(best)] = exact[best]
            labels[row, :len(best)] = found[best]
        return scores, labels

    # Persistence ------------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: Mapping[str, str] | None = None) -> None:
        """Write the index to `directory` atomically: a staging folder renamed into place (an existing
        index there is replaced; any other non-empty folder is refused). `extra`: more text files (name ->
        content) written inside, so a caller's sidecar is replaced together with the index."""
        directory = location(directory)
        if directory.exists() and (not directory.is_dir() or (
                any(directory.iterdir()) and not (folder_view(directory) / "index.json").exists())):
            raise IndexErrorBadInput(f"{directory} exists and is not a vector index folder; refusing to replace it")
        try:
            state = json.dumps({
                "format": FORMAT, "kind": self.kind, "requested_kind": self.requested_kind, "dim": self.dim,
                "params": self.params, "card": self.card, "count": len(self), "slots": len(self._ids),
                "fields": self.fields, "faiss": faiss.__version__}, indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise IndexErrorBadInput(f"the index card must be JSON-serialisable: {e}") from e
        with replace_folder(directory) as tmp:
            if self._index is not None:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
            if self._store is not None:
                faiss.write_index(self._store, str(tmp / "store.faiss"))
            slots = np.flatnonzero(self._alive)
            table = {"id": [self._ids[s] for s in slots.tolist()], "slot": slots}
            for name, f in self._fields.items():
                table[f"meta.{name}"] = [f.values[c] if c >= 0 else None for c in f.codes[slots].tolist()]
            pd.DataFrame(table).to_parquet(tmp / "items.parquet", index=False)
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            (tmp / "index.json").write_text(state, encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        """Open an index saved with `save`; IndexErrorBadInput when missing or corrupt."""
        directory = folder_view(location(directory))
        state_file = directory / "index.json"
        if not state_file.exists():
            raise IndexErrorBadInput(f"no vector index at {directory} (no index.json)")
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if state.get("format") != FORMAT:
                raise ValueError(f"unknown format {state.get('format')!r}")
            self = cls(int(state["dim"]), state["requested_kind"], dict(state["params"]), dict(state["card"]))
            self.kind = state["kind"]
            self._index = faiss.read_index(str(directory / "index.faiss")) \
                if (directory / "index.faiss").exists() else None
            self._store = faiss.read_index(str(directory / "store.faiss")) if self.kind == "ivfpq" else None
            items = pd.read_parquet(directory / "items.parquet")
            n_slots = int(state["slots"])
            slots = items["slot"].to_numpy(np.int64)
            self._ids = [None] * n_slots
            for id_, slot in zip(items["id"].tolist(), slots.tolist(), strict=True):
                self._ids[slot] = id_
                self._slot[id_] = slot
            self._alive = np.zeros(n_slots, dtype=bool)
            self._alive[slots] = True
            for name in state["fields"]:
                f = self._fields[name] = _Field()
                f.codes = np.full(n_slots, -1, dtype=np.int32)
                f.codes[slots] = f.encode(items[f"meta.{name}"].tolist())
            self._check_consistent(int(state["count"]))
        except IndexErrorBadInput:
            raise
        except Exception as e:  # faiss, parquet or JSON errors: one clear message
            reason = " ".join(str(e).split())  # one line: FAISS and Arrow messages may span several
            raise IndexErrorBadInput(f"corrupt vector index at {directory}: {type(e).__name__}: {reason}") from e
        return self

    def _check_consistent(self, count: int) -> None:
        if len(self._slot) != count:
            raise ValueError(f"{len(self._slot)} items listed, index.json says {count}")
        expected = {"flat": len(self), "hnsw": len(self._ids)}.get(self.kind)
        if self.kind == "ivfpq":
            if self._store.ntotal != len(self) or (self._index is not None and self._index.ntotal != len(self)):
                raise ValueError("ivfpq structures do not hold every item")
        elif self._index is None or self._index.ntotal != expected:
            raise ValueError(f"the FAISS index holds {getattr(self._index, 'ntotal', 0)} vectors, expected {expected}")
        for index in (self._index, self._store):
            if index is not None and index.d != self.dim:
                raise ValueError(f"the FAISS index has dimension {index.d}, index.json says {self.dim}")
