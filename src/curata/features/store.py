"""The feature cache: vectors keyed by item content hash + extractor key, one Lance table per extractor key.

    features/<extractor dir>/
      extractor.json        the full key, dim, modality
      vectors.lance/        columns: hash (str, BTREE index), vector (fixed-size list<float32>),
                            error (str|null), seq (int64: write time, the later success wins)
      hashes/               the stored hashes as sorted 64-bit keys, so planning need not load the BTREE
                            (curata.features.hash_filter)

Rows are only ever appended (one fragment per flush, merged by `compact`), so an interrupted run keeps
every committed flush and a rerun computes only what is missing. Looking up k hashes goes through the
scalar index on `hash`: its cost grows with k, not with the store. Keying by content hash (not item id)
means the same image ingested twice, or under two ids, is computed once.

Stores written before Lance (`part-*.parquet`) are converted on first use: the parts are copied into
the table, the row count is verified, and only then are the parts deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curata import tables
from curata.atomic import atomic_write_text, name_file
from curata.features.base import Extractor
from curata.features.hash_filter import HashFilter
from curata.storage import is_remote, location

TABLE = "vectors.lance"
# Above this share of the store, a lookup scans the table (streamed) instead of probing the index per hash.
SCAN_SHARE = 0.25
LOOKUP_CHUNK = 8192  # hashes per index probe: bounds the filter expression
ONE_PASS_BYTES = 64 * 2**20  # lookups whose vectors fit in this are read in one pass
PLAN_MARK = "planned.json"  # how far into the collection the store is known complete (incremental planning)


def store_dirname(key: str) -> str:
    """A short, filesystem-safe, unique folder name for an extractor key."""
    name = key.split("[", 1)[0].replace("@", "@v")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name) + "-" + digest


def rows_schema(dim: int) -> pa.Schema:
    """The table's schema for `dim`-d vectors."""
    return pa.schema([("hash", pa.string()), ("vector", pa.list_(pa.float32(), dim)), ("error", pa.string()),
                      ("seq", pa.int64())])


def rows_table(hashes: list[str], vectors: np.ndarray, errors: list[str | None], dim: int) -> pa.Table:
    """Rows in the table's schema, stamped with one write time (`seq`: the later success wins)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(hashes), dim)
    return pa.table({
        "hash": pa.array(hashes, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "error": pa.array(errors, pa.string()),
        "seq": pa.array(np.full(len(hashes), time.time_ns(), np.int64)),
    }, schema=rows_schema(dim))


def write_fragments(target: str, hashes: list[str], vectors: np.ndarray, errors: list[str | None], dim: int
                    ) -> list[str]:
    """Write rows as fragment files of the table at `target` (`FeatureStore.fragment_target`) without committing
    them, from any process that can reach it (a Ray worker); returns their metadata as JSON for the committer."""
    lance = tables._lance()
    HashFilter(location(target).parent).add([h for h, e in zip(hashes, errors, strict=True) if e is None])
    written = lance.fragment.write_fragments(rows_table(hashes, vectors, errors, dim), target,
                                             schema=rows_schema(dim), max_rows_per_file=tables.TARGET_ROWS_PER_FRAGMENT)
    return [json.dumps(f.to_json()) for f in written]


class CorruptPart(tables.CorruptTable):
    """A feature table or legacy part that cannot be read (overwritten, truncated outside curata)."""


class FeatureStore:
    def __init__(self, features_dir: Path, key: str, dim: int, modality: str = "image"):
        self.key = key
        self.dim = dim
        self.modality = modality
        self.path = features_dir / store_dirname(key)
        self.table_path = self.path / TABLE
        self.notes: list[str] = []  # what `missing` repaired or converted, for the caller to report

    @classmethod
    def for_extractor(cls, features_dir: Path, extractor: Extractor, fit_id: str = "") -> FeatureStore:
        key = extractor.key + (f"#fit={fit_id}" if fit_id else "")
        return cls(features_dir, key, extractor.dim, extractor.modality)

    @classmethod
    def in_folder(cls, folder: Path) -> FeatureStore:
        """The store a folder holds, from its `extractor.json` (upkeep commands walk the folders)."""
        meta = json.loads((folder / "extractor.json").read_text())
        store = cls(folder.parent, meta["key"], int(meta["dim"]), meta.get("modality", "image"))
        store.path, store.table_path = folder, folder / TABLE  # the folder as found, whatever its name
        return store

    @property
    def hash_filter(self) -> HashFilter:
        return HashFilter(self.path)

    @property
    def fix(self) -> str:
        return (f"rerun `curata features -e {self.key.split('@', 1)[0]}` to drop the damaged rows and recompute "
                "their items")

    # Reading --------------------------------------------------------------------------------
    def _dataset(self) -> Any | None:
        if not tables.exists(self.table_path):
            self._convert_parts()  # a store written before Lance (no glob on the lookups of a converted one)
            if not tables.exists(self.table_path):
                return None
        return tables.open_table(self.table_path, self.fix)

    def _scan(self, dataset: Any, **scan: Any) -> pa.Table:
        try:
            return tables.read(dataset, self.table_path, self.fix, **scan)
        except tables.CorruptTable as e:
            self.forget_plan_mark()  # so the `features` rerun the message asks for checks (and repairs) it all
            raise CorruptPart(str(e)) from e.__cause__

    def _empty(self) -> pa.Table:
        return pa.table({"hash": pa.array([], pa.string()),
                         "vector": pa.array([], pa.list_(pa.float32(), self.dim)),
                         "error": pa.array([], pa.string()), "seq": pa.array([], pa.int64())})

    def read(self) -> pa.Table:
        """The whole table (tests and repairs; stages read through `lookup` / `iter_lookup`)."""
        dataset = self._dataset()
        return self._empty() if dataset is None else self._scan(dataset)

    def count(self) -> int:
        dataset = self._dataset()
        return 0 if dataset is None else dataset.count_rows()

    def missing(self, hashes: list[str] | np.ndarray, *, scan: bool = True) -> np.ndarray:
        """Which of `hashes` have no computed vector. Failed rows count as missing, so a rerun retries them
        (a missing model or a full disk must not be cached forever). Called by the writers before computing:
        a damaged table is repaired here (its unreadable fragments dropped, their items then missing).

        `scan=False`: never answer by reading the whole hash column, however large a share of the store the
        question is (probes by the runs and the index instead): what the caller holds then grows with the
        question, not with the store (the Ray driver, planning window after window of a growing store)."""
        try:
            ok = self._computed_among(hashes, scan)
        except CorruptPart:
            self.repair()
            ok = self._computed_among(hashes, scan)
        if ok is None or not len(hashes):
            return np.ones(len(hashes), bool)
        return ~pc.is_in(pa.array(hashes, pa.string()), value_set=ok).to_numpy(zero_copy_only=False)

    def _computed_among(self, hashes: list[str] | np.ndarray, scan: bool = True) -> pa.Array | None:
        """`_computed(hashes)`, with the store's hash runs ruling out the hashes it certainly lacks (new items,
        mostly), so only the others are probed in the index. A question about much of the store is answered by
        one scan of the hash column (unless `scan` is off), as are questions while the runs are missing or
        damaged (they are rebuilt from that scan)."""
        dataset = self._dataset()
        if dataset is None:
            return None
        if not len(hashes):
            return pa.array([], pa.string())
        runs = self.hash_filter
        large = scan and len(hashes) > SCAN_SHARE * dataset.count_rows()
        maybe = None if large else runs.contains(list(hashes))
        if maybe is not None:
            return self._computed(dataset, np.asarray(hashes, dtype=object)[maybe], scan)
        if not scan:
            return self._computed(dataset, hashes, scan)
        every = self._computed(dataset)
        if not runs.readable():
            with contextlib.suppress(OSError):  # a read-only workspace: the index keeps answering
                runs.build(every.to_pylist())
        return every

    def _computed(self, dataset: Any, among: list[str] | np.ndarray | None = None, scan: bool = True) -> pa.Array:
        """Hashes with a computed vector: all of them, or those of `among` (a few, through the index; many, by a
        scan of the hash column unless `scan` is off)."""
        computed = pc.field("error").is_null()
        if among is not None and not len(among):
            return pa.array([], pa.string())
        if among is None or (scan and len(among) > SCAN_SHARE * dataset.count_rows()):
            table = self._scan(dataset, columns=["hash"], filter=computed)
        else:
            wanted = list(dict.fromkeys(among))
            table = pa.concat_tables([self._scan(dataset, columns=["hash"],
                                                 filter=pc.field("hash").isin(wanted[i:i + LOOKUP_CHUNK]) & computed)
                                      for i in range(0, len(wanted), LOOKUP_CHUNK)])
        return table["hash"].combine_chunks()  # duplicates are harmless to `is_in`

    def plan_mark(self) -> set[int] | None:
        """The collection fragments whose every item is known to have its vector in this store (see
        `Collection.fragment_ids`), or None: plan from the whole collection."""
        try:
            return {int(f) for f in json.loads((self.path / PLAN_MARK).read_text())["fragments"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def set_plan_mark(self, fragments: list[int]) -> None:
        """Record that every item of these collection fragments has its vector (after a run none failed in)."""
        if self.path.is_dir():
            atomic_write_text(self.path / PLAN_MARK, json.dumps({"fragments": sorted(int(f) for f in fragments)}))

    def forget_plan_mark(self) -> None:
        (self.path / PLAN_MARK).unlink(missing_ok=True)

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """Vectors for `hashes` in order (zeros where missing or failed) and each one's error, if any;
        a hash never computed reports 'not computed'. Cost grows with len(hashes), not the store: the hashes
        are probed through the index (the table is scanned only when most of it is asked for). A small lookup
        reads its rows in one pass; a large one first reads which rows answer (no vectors), then copies their
        vectors batch by batch into the result, so memory stays near the result's size."""
        dataset = self._dataset()
        if dataset is None or not len(hashes):
            return np.zeros((len(hashes), self.dim), np.float32), ["not computed"] * len(hashes)
        wanted = pd.Index(pd.unique(np.asarray(hashes, dtype=object)))
        scan = len(wanted) > SCAN_SHARE * dataset.count_rows()
        filters = [None] if scan else [pc.field("hash").isin(wanted[i:i + LOOKUP_CHUNK].tolist())
                                       for i in range(0, len(wanted), LOOKUP_CHUNK)]
        columns = ["hash", "vector", "error", "seq"]
        if len(wanted) * self.dim * 4 <= ONE_PASS_BYTES:
            fetched = pa.concat_tables([self._scan(dataset, columns=columns, filter=f) for f in filters])
            meta, batches = fetched, fetched.to_batches
        else:
            meta = pa.concat_tables([self._scan(dataset, columns=["hash", "error", "seq"], filter=f)
                                     for f in filters])

            def batches() -> Iterator[pa.RecordBatch]:
                for f in filters:
                    yield from self._batches(dataset, columns=columns, filter=f)
        # Which stored row answers each hash: a hash may be stored more than once (a rerun after a failure);
        # the latest success wins, and a failure never hides an earlier success.
        found = pd.DataFrame({"hash": meta["hash"].to_numpy(zero_copy_only=False),
                              "ok": meta["error"].is_null().to_numpy(zero_copy_only=False),
                              "seq": meta["seq"].to_numpy(), "error": meta["error"].to_numpy(zero_copy_only=False)})
        found = found[found["hash"].isin(wanted)]
        best = found.sort_values(["ok", "seq"], kind="stable").drop_duplicates("hash", keep="last")
        best = best.set_index("hash")
        out = np.zeros((len(wanted), self.dim), np.float32)
        winners = best[best["ok"]]
        if len(winners):
            # The winning rows' vectors, one record batch at a time, straight into `out`.
            winning_seq = winners["seq"].astype("Int64")  # exact: time_ns does not fit a float64
            for batch in batches():
                got = batch.column("hash").to_numpy(zero_copy_only=False)
                expected = winning_seq.reindex(got).to_numpy(dtype=np.int64, na_value=-1)
                keep = expected == batch.column("seq").to_numpy()
                if keep.any():
                    vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                    out[wanted.get_indexer(got[keep])] = vectors.reshape(-1, self.dim)[keep]
        at = wanted.get_indexer(np.asarray(hashes, dtype=object))
        status = best.reindex(wanted)
        ok = status["ok"].fillna(False).to_numpy(bool)[at]
        stored_error = status["error"].to_numpy(object)[at]
        failed = np.array([isinstance(e, str) for e in stored_error], bool)
        errors = np.where(ok, None, np.where(failed, stored_error, "not computed")).tolist()
        return (out if len(wanted) == len(hashes) and (at == np.arange(len(at))).all() else out[at]), errors

    def _batches(self, dataset: Any, **scan: Any) -> Iterator[pa.RecordBatch]:
        try:
            yield from tables.batches(dataset, self.table_path, self.fix, **scan)
        except tables.CorruptTable as e:
            self.forget_plan_mark()
            raise CorruptPart(str(e)) from e.__cause__

    def iter_lookup(self, hashes: list[str], batch_rows: int) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """`lookup` in consecutive chunks of `batch_rows` hashes: the out-of-core reader (a chunk of vectors
        in memory at a time)."""
        for start in range(0, len(hashes), max(1, batch_rows)):
            yield self.lookup(hashes[start:start + batch_rows])

    # Writing --------------------------------------------------------------------------------
    def _prepare_write(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "extractor.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"key": self.key, "dim": self.dim, "modality": self.modality}))
        self._dataset()  # converts Parquet parts first, so they are not converted over the new rows later

    def append(self, hashes: list[str], vectors: np.ndarray, errors: list[str | None]) -> None:
        """Append rows as one commit: a crash before the commit leaves the table as it was."""
        if not hashes:
            return
        self._prepare_write()
        table = rows_table(hashes, vectors, errors, self.dim)
        self.hash_filter.add([h for h, e in zip(hashes, errors, strict=True) if e is None])  # before the commit
        try:
            if tables.exists(self.table_path):
                tables.write(table, self.table_path, mode="append")
            else:
                dataset = tables.write(table, self.table_path, mode="create")
                dataset.create_scalar_index("hash", "BTREE")
                self.hash_filter.mark_complete()  # its every row went through `add`
        except BaseException as e:  # a full disk: the error names the store
            name_file(e, self.table_path)
            raise

    # Distributed writes: workers write fragments, one process commits them --------------------
    def fragment_target(self) -> str:
        """Where workers write fragments (`write_fragments`) for `commit_fragments`; the store's folder and
        metadata exist afterwards (the table itself may not, until the first commit)."""
        self._prepare_write()
        if not tables.exists(self.table_path):  # an empty table, so workers append to it (its index comes later)
            tables.write(rows_table([], np.zeros((0, self.dim)), [], self.dim), self.table_path, mode="create")
            self.hash_filter.mark_complete()
        return str(self.table_path)

    def commit_fragments(self, fragments: list[str]) -> None:
        """Make the fragments workers wrote (`write_fragments`' JSON) part of the table in one commit (the first
        also indexes it). Fragments never committed (a killed run) are unreferenced files that
        `compact`'s version cleanup deletes once they are 7 days old (Lance cannot tell them from a write still
        in progress before that)."""
        if not fragments:
            return
        lance = tables._lance()
        metadata = [lance.fragment.FragmentMetadata.from_json(f) for f in fragments]
        try:
            dataset = tables.open_table(self.table_path, self.fix)
            dataset = lance.LanceDataset.commit(str(self.table_path), lance.LanceOperation.Append(metadata),
                                                read_version=dataset.version)
            if not dataset.describe_indices():  # the table `fragment_target` created empty: its first rows
                dataset.create_scalar_index("hash", "BTREE")
        except BaseException as e:  # a full disk: the error names the store
            name_file(e, self.table_path)
            raise

    def finish(self) -> None:
        """After a run's appends: index the new fragments, and merge fragments once there are many."""
        self._convert_parts()  # deletes the parts of a conversion killed after its table was renamed in
        dataset = self._dataset()
        if dataset is None:
            return
        if not dataset.describe_indices():
            # The empty table `fragment_target` made for a Ray run killed before its first commit: it gets its
            # hash index once it holds rows (a later local run's appends).
            if not dataset.count_rows():
                return
            dataset.create_scalar_index("hash", "BTREE")
        if tables.needs_compaction(dataset):
            tables.compact(dataset)
        else:
            tables.index_new_rows(dataset)

    def merge_fragments(self, rewrite: Callable[[list[Any], str], list[Any]]) -> bool:
        """When the table has many fragments (a Ray run writes hundreds), merge them with the rows rewritten by
        `rewrite` (`tables.compact_with`: workers rewrite, this process only commits), before `finish`, which
        would otherwise rewrite them here. Returns whether it merged."""
        dataset = self._dataset()
        if dataset is None or not tables.needs_compaction(dataset):
            return False
        tables.compact_with(dataset, rewrite)
        return True

    def compact(self) -> dict[str, int]:
        """Merge every fragment into large ones and delete unreferenced files; no vector is lost."""
        dataset = self._dataset()
        if dataset is None:
            return {"fragments_before": 0, "fragments_after": 0, "fragments_removed": 0, "fragments_added": 0}
        return tables.compact(dataset, keep_versions=timedelta(0))

    def repair(self) -> int:
        """Rewrite the table from its readable fragments (derived data: their items are recomputed by the
        next run). Returns how many rows were dropped."""
        dataset = self._dataset() if tables.exists(self.table_path) else None
        if dataset is None:
            return 0
        kept, dropped = tables.readable_fragments(dataset)
        if dropped:
            self.notes.append(f"dropped {dropped} row(s) in damaged fragments of {self.table_path}: their items "
                              "are recomputed")
        self._rewrite(pa.concat_tables(kept) if kept else self._empty())
        return dropped

    def _rewrite(self, table: pa.Table) -> None:
        """Replace the table by `table` (verified row count, then an atomic folder swap; on object storage, which
        cannot rename a folder, one overwrite commit of the table in place, atomic as every Lance commit)."""
        self.forget_plan_mark()  # rows may have been dropped: the next plan checks every item again
        if is_remote(self.table_path):
            dataset = tables.write(table, self.table_path, mode="overwrite")
            if len(table):
                dataset.create_scalar_index("hash", "BTREE", replace=True)
            self.hash_filter.build(pc.filter(table["hash"], table["error"].is_null()).to_pylist())
            return
        staged = self.path / f".{TABLE}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            dataset = tables.write(table, staged, mode="create")
            if len(table):
                dataset.create_scalar_index("hash", "BTREE")
            self.hash_filter.build(pc.filter(table["hash"], table["error"].is_null()).to_pylist())
            if tables.open_table(staged, self.fix).count_rows() != len(table):
                raise OSError(f"verifying {staged} failed: row count differs")
            old = self.path / f".{TABLE}.old-{uuid.uuid4().hex[:8]}"
            if self.table_path.exists():
                self.table_path.rename(old)
            staged.rename(self.table_path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _convert_parts(self) -> None:
        """Copy the Parquet parts of a store written before Lance into the table, once (see module doc)."""
        if not any(self.path.glob("part-*.parquet")):
            return
        with open(self.path / ".convert.lock", "w") as lock:  # one converter; the others find it done
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._convert_parts_locked()

    def _convert_parts_locked(self) -> None:
        parts = sorted(self.path.glob("part-*.parquet"))
        if not parts:
            return
        if tables.exists(self.table_path):  # converted and verified; a kill came before the parts went
            for part in parts:
                part.unlink(missing_ok=True)
            return
        pieces = []
        for seq, part in enumerate(parts):
            try:
                table = pq.read_table(part, columns=["hash", "vector", "error"])
                if table.schema.field("vector").type != pa.list_(pa.float32(), self.dim):
                    raise ValueError(f"vectors of type {table.schema.field('vector').type}, expected {self.dim}-d")
            except (pa.ArrowException, ValueError, OSError) as e:
                if isinstance(e, PermissionError):
                    raise
                self.notes.append(f"dropped unreadable feature part {part} ({type(e).__name__}): its items are "
                                  "recomputed")
                continue
            pieces.append(table.append_column("seq", pa.array(np.full(len(table), seq, np.int64))))
        self._rewrite(pa.concat_tables(pieces) if pieces else self._empty())
        for part in parts:
            part.unlink(missing_ok=True)
        self.notes.append(f"converted {len(parts)} Parquet part(s) of {self.path.name} to a Lance table")

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path)
