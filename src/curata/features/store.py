"""The feature cache: vectors keyed by item content hash + extractor key, as Parquet parts.

    features/<extractor dir>/
      extractor.json        the full key, dim, modality
      part-<n>.parquet      columns: hash (str), vector (fixed-size list<float32>), error (str|null)

Parts are only ever appended (never rewritten), so an interrupted run keeps every finished part
and a rerun computes only what is missing; a part damaged from outside is dropped by the next run,
which recomputes its items (readers name it and say so). Keying by content hash (not item id) means the same
image ingested twice, or under two ids, is computed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curata.atomic import atomic_write_text, name_file
from curata.features.base import Extractor


def store_dirname(key: str) -> str:
    """A short, filesystem-safe, unique folder name for an extractor key."""
    name = key.split("[", 1)[0].replace("@", "@v")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name) + "-" + digest


class CorruptPart(ValueError):
    """A part that cannot be read (overwritten, truncated by a crash outside curata, another schema)."""


class FeatureStore:
    def __init__(self, features_dir: Path, key: str, dim: int, modality: str = "image"):
        self.key = key
        self.dim = dim
        self.modality = modality
        self.path = features_dir / store_dirname(key)
        self.notes: list[str] = []  # what `known_hashes` repaired, for the caller to report

    @classmethod
    def for_extractor(cls, features_dir: Path, extractor: Extractor, fit_id: str = "") -> FeatureStore:
        key = extractor.key + (f"#fit={fit_id}" if fit_id else "")
        return cls(features_dir, key, extractor.dim, extractor.modality)

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def _read_part(self, part: Path, columns: list[str] | None = None) -> pa.Table:
        try:
            table = pq.read_table(part, columns=columns)
            if "vector" in table.column_names and table.schema.field("vector").type != pa.list_(pa.float32(),
                                                                                                  self.dim):
                raise ValueError(f"vectors of type {table.schema.field('vector').type}, expected {self.dim}-d")
            return table
        except (pa.ArrowException, ValueError, OSError) as e:
            if isinstance(e, PermissionError | FileNotFoundError):
                raise
            reason = " ".join(str(e).split())
            raise CorruptPart(f"unreadable feature part {part} ({type(e).__name__}: {reason}); rerun `curata "
                              f"features -e {self.key.split('@', 1)[0]}` to drop it and recompute its items") from e

    def _tables(self, columns: list[str] | None = None, *, repair: bool = False) -> list[pa.Table]:
        """Every part; with `repair`, unreadable parts are deleted (their items then count as missing, so
        the run recomputes them) and noted, else they raise CorruptPart naming the file."""
        tables = []
        for part in self._parts():
            try:
                tables.append(self._read_part(part, columns))
            except CorruptPart as e:
                if not repair:
                    raise
                part.unlink(missing_ok=True)
                self.notes.append(f"dropped unreadable feature part {part} ({type(e.__cause__).__name__}): its "
                                  "items are recomputed")
        return tables

    def read(self) -> pa.Table:
        tables = self._tables()
        if not tables:
            return pa.table({"hash": pa.array([], pa.string()),
                             "vector": pa.array([], pa.list_(pa.float32(), self.dim)),
                             "error": pa.array([], pa.string())})
        return pa.concat_tables(tables)

    def known_hashes(self) -> set[str]:
        """Hashes with a computed vector. Failed rows are left out, so a rerun retries them (a missing
        model or a full disk must not be cached forever); a later success wins in `lookup`. Called by the
        writers before computing: unreadable parts are dropped here, so a rerun repairs the store."""
        tables = self._tables(["hash", "error"], repair=True)
        if not tables:
            return set()
        table = pa.concat_tables(tables)
        return {h for h, e in zip(table["hash"].to_pylist(), table["error"].to_pylist(), strict=True) if e is None}

    def append(self, hashes: list[str], vectors: np.ndarray, errors: list[str | None]) -> None:
        """Write one new part (atomically: temp file, then rename)."""
        if not hashes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "extractor.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"key": self.key, "dim": self.dim, "modality": self.modality}))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(hashes), self.dim)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        table = pa.table({
            "hash": pa.array(hashes, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
            "error": pa.array(errors, pa.string()),
        })
        # Names sort by time and are unique per writer, so concurrent runs never overwrite a part.
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.path / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            tmp.replace(self.path / f"{name}.parquet")
        except BaseException as e:  # a full disk: no half part left behind, and the error names the store
            tmp.unlink(missing_ok=True)
            name_file(e, self.path)
            raise

    def lookup(self, hashes: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """Vectors for `hashes` in order (zeros where missing or failed) and each one's error, if any;
        a hash never computed reports 'not computed'."""
        table = self.read()
        if len(table):
            matrix = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            matrix = matrix.reshape(len(table), self.dim)
        else:
            matrix = np.zeros((0, self.dim), np.float32)
        errors_col = table["error"].to_pylist()
        # A hash may be stored more than once (a rerun after a failure, two runs before locking existed):
        # the latest success wins, a failure never hides an earlier success.
        position: dict[str, int] = {}
        for i, h in enumerate(table["hash"].to_pylist()):
            if errors_col[i] is None or errors_col[position.get(h, i)] is not None:
                position[h] = i
        out = np.zeros((len(hashes), self.dim), np.float32)
        errors: list[str | None] = []
        for row, h in enumerate(hashes):
            i = position.get(h)
            if i is None:
                errors.append("not computed")
                continue
            errors.append(errors_col[i])
            if errors_col[i] is None:
                out[row] = matrix[i]
        return out, errors

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
