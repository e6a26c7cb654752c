"""The items table: one row per item, a Lance table in the workspace (`collection.lance/`).

Columns are fixed (see `COLUMNS`) so every stage can rely on them; anything a source carries beyond
them goes into `meta` (a JSON object string) rather than growing the schema per source. One more,
internal column, `row_hash` (a 64-bit digest of the row), lets an upsert tell unchanged rows from
changed ones without comparing them field by field.

Every write is one commit (a Lance version): an ingest that changes nothing commits nothing, and an
earlier version can be restored (`rollback`). Reads name their columns and filters, which Lance
applies in the scan; ids have a BTREE index, so touching k items costs O(k). A workspace written before
Lance (`collection.parquet`) is converted on first use (see `Collection.convert_parquet`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curata import tables
from curata.atomic import name_file
from curata.storage import is_remote

SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # stable item id, unique in the workspace
        ("source", pa.string()),  # source name the item was ingested from
        ("collection", pa.string()),  # collection name (NFT collection, catalogue, demo, ...)
        ("image", pa.string()),  # absolute path of the image file
        ("image_sha256", pa.string()),  # content hash of the image bytes: the feature cache key
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_mode", pa.string()),  # original PIL mode (RGB, RGBA, P, CMYK, I;16, ...)
        ("image_format", pa.string()),
        ("text", pa.string()),  # main text: product description, NFT caption, first caption
        ("captions", pa.list_(pa.string())),  # all captions (NFT1000-style, human captions)
        ("label", pa.string()),  # single label when the source has one
        ("tags", pa.list_(pa.string())),  # multi-label tags, e.g. "hair=short_black"
        ("attributes", pa.string()),  # JSON list of {trait_type, value} for NFT metadata
        ("split", pa.string()),
        ("meta", pa.string()),  # JSON object of any other source fields
    ]
)
COLUMNS = [f.name for f in SCHEMA]
# Curation (curata.curation): `label` and `tags` hold the curated value where a curator set one, so every stage,
# filter and index reads it; the source's own values stay beside them, so a re-ingest updates those without
# undoing an edit. `curated` names the fields a curator set; an excluded item or one marked as a duplicate of
# another is left out of the stages (`Workspace.items`), not deleted.
CURATION = pa.schema(
    [
        ("source_label", pa.string()),
        ("source_tags", pa.list_(pa.string())),
        ("curated", pa.list_(pa.string())),  # label, tags, excluded, duplicate_of: the fields a curator set
        ("excluded", pa.bool_()),
        ("duplicate_of", pa.string()),  # the id of the item kept in its place
        ("edit_version", pa.int32()),  # edits applied to the item (its ETag); null = none
    ]
)
CURATION_COLUMNS = [f.name for f in CURATION]
TABLE_SCHEMA = pa.schema([*SCHEMA, pa.field("row_hash", pa.uint64()), *CURATION])
ACTIVE = "(excluded IS NULL OR excluded = false) AND duplicate_of IS NULL"  # items the stages read
LIST_COLUMNS = ("captions", "tags")
INDEXED = ("id", "label", "collection")
REQUIRED = ("id", "source", "image", "image_sha256")  # never null in a collection curata wrote


@dataclass
class Item:
    """One ingested item before it becomes a row."""

    id: str
    source: str
    collection: str
    image: str
    image_sha256: str = ""
    width: int = 0
    height: int = 0
    image_mode: str = ""
    image_format: str = ""
    text: str = ""
    captions: list[str] = field(default_factory=list)
    label: str | None = None
    tags: list[str] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy dominates ingest time on large collections.
        row = {name: getattr(self, name) for name in COLUMNS}
        row["attributes"] = json.dumps(self.attributes, ensure_ascii=False)
        row["meta"] = json.dumps(self.meta, ensure_ascii=False, default=str)
        return row


def empty_frame() -> pd.DataFrame:
    return SCHEMA.empty_table().to_pandas()


def _empty(columns: list[str]) -> pd.DataFrame:
    return TABLE_SCHEMA.empty_table().to_pandas()[columns]


def _has_curation(dataset: Any) -> bool:
    return "curated" in dataset.schema.names


_ACTIVE_EXPR = ((pc.field("excluded").is_null() | (pc.field("excluded") == pa.scalar(False)))
                & pc.field("duplicate_of").is_null())


def items_to_frame(items: list[Item]) -> pd.DataFrame:
    if not items:
        return empty_frame()
    table = pa.Table.from_pylist([it.to_row() for it in items], schema=SCHEMA)
    return table.to_pandas()


_KEPT = ("label", "tags", "curated", "excluded", "duplicate_of", "edit_version")  # what a source row never sets


def _keep_curation(table: pa.Table, stored: pd.DataFrame) -> tuple[pa.Table, int]:
    """Source rows (`table`) with the curated values of `stored` (rows of `_KEPT` by id) put back: a field a
    curator set keeps its value, the source's goes to source_label / source_tags. Returns the rows and how
    many items kept an edit."""
    if not len(stored):
        return table, 0
    stored = stored.set_index("id")
    ids = table["id"].to_pylist()
    at = [i for i, item in enumerate(ids) if item in stored.index]
    if not at:
        return table, 0
    columns = {name: table[name].to_pylist() for name in _KEPT}
    for i in at:
        row = stored.loc[ids[i]]
        fields = list(row["curated"]) if row["curated"] is not None else []
        for name in _KEPT:
            if name in ("label", "tags") and name not in fields:
                continue
            columns[name][i] = plain_value(name, row[name])
    for name in _KEPT:
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(columns[name], TABLE_SCHEMA.field(name).type))
    return table, len(at)


def plain_value(name: str, value: Any) -> Any:
    """A stored curation value as Arrow takes it back (pandas gives NaN for nulls, floats for nullable ints)."""
    if value is None or (not isinstance(value, str | list | np.ndarray) and pd.isna(value)):
        return None
    if name in ("tags", "curated", "source_tags"):
        return [str(v) for v in value]
    return {"excluded": bool, "edit_version": int}.get(name, str)(value)


class CollectionError(ValueError):
    """The collection file is not a curata collection (another table, or damaged): one line, exit code 2."""


FIX = "restore it from a backup, or `curata repair --collection` to drop what cannot be read and ingest again"
# Above this share of the table, an upsert reads every id once instead of probing the index per id.
SCAN_SHARE = 0.25
PROBE_CHUNK = 8192


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit digest per row over every column (vectorised: pandas hashes each column, then combines),
    so an upsert compares one number per row. Lists are joined on a separator no text holds."""
    cols = {}
    for name in COLUMNS:
        col = frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        if name in LIST_COLUMNS:
            col = col.map(lambda v: "\x1f".join(map(str, v)) if v is not None and len(v) else "")
        elif name in ("width", "height"):
            col = pd.to_numeric(col, errors="coerce").fillna(0).astype("int64")
        else:
            col = col.astype(object).where(col.notna(), "\x00")
        cols[name] = col
    return pd.util.hash_pandas_object(pd.DataFrame(cols), index=False).to_numpy(np.uint64)


def _to_table(frame: pd.DataFrame) -> pa.Table:
    """Source rows as stored: the digest of the source's values, and those values as the source's too."""
    table = pa.Table.from_pandas(frame[COLUMNS], schema=SCHEMA, preserve_index=False)
    columns = [*table.columns, pa.array(row_hashes(frame), pa.uint64()), table["label"], table["tags"],
               *(pa.nulls(len(table), f.type) for f in CURATION if f.name not in ("source_label", "source_tags"))]
    return pa.Table.from_arrays(columns, schema=TABLE_SCHEMA)


def read_parquet_collection(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A collection written before Lance (`collection.parquet`); a foreign or damaged file is a CollectionError
    naming it (read with SCHEMA alone, a foreign table would come back as rows of nulls)."""
    import pyarrow.parquet as pq

    fix = "restore it, or move it away and ingest again"
    try:
        missing = [c for c in REQUIRED if c not in pq.read_schema(path).names]
        if missing:
            raise CollectionError(f"{path} is not a curata collection: it has no {', '.join(missing)} column; {fix}")
        frame = pq.read_table(path, schema=SCHEMA, columns=columns).to_pandas()
    except (pa.ArrowException, ValueError) as e:  # not Parquet, truncated, or columns of other types
        if isinstance(e, CollectionError):
            raise
        reason = " ".join(str(e).split())
        raise CollectionError(f"{path} is not a readable curata collection ({type(e).__name__}: {reason}); "
                              f"{fix}") from e
    empty = [c for c in REQUIRED if c in frame.columns and frame[c].isna().any()]
    if empty:
        raise CollectionError(f"{path} has items without {' or '.join(empty)}: not a curata collection; {fix}")
    return frame


@dataclass
class Upsert:
    added: int
    updated: int
    unchanged: int
    version: int | None  # the commit this upsert made; None when nothing changed
    kept_edits: int = 0  # updated items whose curated values were kept over the source's new ones
    # Made on the `new_ids_at` fast path (no other commit since): the version after this one, at which the
    # caller's further new ids are still new. None once anything else committed: the caller probes from then on.
    new_ids_at: int | None = None


def _fragment_scan(dataset: Any, fragments: Sequence[int] | None) -> dict[str, Any] | None:
    """Scanner options for the rows of these fragment ids only (all rows for None); None when none of them is
    in this version."""
    if fragments is None:
        return {}
    chosen = set(fragments)
    found = [f for f in dataset.get_fragments() if f.fragment_id in chosen]
    return {"fragments": found} if found else None


class Collection:
    """The items table of one workspace (`root/collection.lance`) and its history (`root/history.jsonl`:
    what each version was, written by curata next to Lance's own version list)."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "collection.lance"
        self.legacy_path = root / "collection.parquet"
        self.history_path = root / "history.jsonl"

    @property
    def exists(self) -> bool:
        return tables.exists(self.path)

    def _dataset(self, version: int | None = None) -> Any | None:
        if not self.exists:
            return None
        try:
            dataset = tables.open_table(self.path, FIX, version)
        except tables.CorruptTable as e:
            raise CollectionError(str(e)) from e.__cause__
        if "image_sha256" not in dataset.schema.names or "row_hash" not in dataset.schema.names:
            raise CollectionError(f"{self.path} is not a curata collection (columns "
                                  f"{', '.join(dataset.schema.names[:6])}...); move it away and ingest again")
        return dataset

    def dataset(self) -> Any | None:
        """The current version's Lance dataset (None before the first ingest), for readers that pin it."""
        return self._dataset()

    @property
    def version(self) -> int:
        dataset = self._dataset()
        return 0 if dataset is None else int(dataset.version)

    def fragment_ids(self) -> list[int]:
        """The ids of the current version's fragments. Fragments are immutable and Lance never reuses an id
        (an upsert, a compaction or a rollback brings fragments of other ids), so a stage that has seen every
        row of some fragments reads only the rows of the others next time (`read(fragments=...)`)."""
        dataset = self._dataset()
        return sorted(f.fragment_id for f in dataset.get_fragments()) if dataset is not None else []

    def count(self, where: str | None = None) -> int:
        dataset = self._dataset()
        return 0 if dataset is None else int(dataset.count_rows(filter=where))

    def read(self, columns: list[str] | None = None, where: str | pc.Expression | None = None,
             limit: int | None = None, offset: int | None = None, fragments: Sequence[int] | None = None,
             active_only: bool = False) -> pd.DataFrame:
        """Items as a DataFrame: only `columns` (in that order; the source columns by default, curation
        columns on request), only rows matching `where` (a Lance SQL filter or a pyarrow expression, applied in
        the scan), optionally a page (`limit`, `offset`); `fragments`: only the rows of these fragments (see
        `fragment_ids`); `active_only`: without the items a curator excluded or marked as duplicates."""
        if columns is not None:
            unknown = [c for c in columns if c not in COLUMNS and c not in CURATION_COLUMNS]
            if unknown:
                raise ValueError(f"not collection columns: {', '.join(unknown)}")
        wanted = list(columns or COLUMNS)
        dataset = self._dataset()
        if dataset is None:
            return _empty(wanted)
        scan = _fragment_scan(dataset, fragments)
        if scan is None:
            return _empty(wanted)
        curated = _has_curation(dataset)
        if active_only and curated:
            where = ACTIVE if where is None else (f"({where}) AND {ACTIVE}" if isinstance(where, str)
                                                  else where & _ACTIVE_EXPR)
        stored = wanted if curated else [c for c in wanted if c in COLUMNS]
        try:
            table = tables.read(dataset, self.path, FIX, columns=stored, filter=where, limit=limit,
                                offset=offset, **scan)
        except tables.CorruptTable as e:
            raise CollectionError(str(e)) from e.__cause__
        frame = table.to_pandas()
        if not curated:  # a table written before curation: the source's values are the only ones
            for name in wanted:
                if name not in frame.columns:
                    source = name.removeprefix("source_")
                    frame[name] = frame[source] if source in frame.columns and source != name else None
            frame = frame[wanted]
        return frame

    def iter_read(self, columns: list[str], *, batch_rows: int, fragments: Sequence[int] | None = None,
                  version: int | None = None) -> Iterator[pd.DataFrame]:
        """`read` of source columns in pages of `batch_rows` rows (the last one shorter), streamed by one scan (a
        long collection costs one pass, not a pass per page; memory holds about one page). Small fragments'
        batches are gathered into whole pages, so a collection of many small ingests still gives full pages."""
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"not source columns of the collection: {', '.join(unknown)}")
        dataset = self._dataset(version)
        if dataset is None:
            return
        scan = _fragment_scan(dataset, fragments)
        if scan is None:
            return
        pending: list[pa.RecordBatch] = []
        rows = 0
        try:
            for batch in tables.batches(dataset, self.path, FIX, columns=columns, batch_size=batch_rows, **scan):
                pending.append(batch)
                rows += batch.num_rows
                while rows >= batch_rows:
                    page = pa.Table.from_batches(pending)
                    yield page.slice(0, batch_rows).to_pandas()
                    rest = page.slice(batch_rows)
                    pending, rows = rest.to_batches(), rest.num_rows
        except tables.CorruptTable as e:
            raise CollectionError(str(e)) from e.__cause__
        if rows:
            yield pa.Table.from_batches(pending).to_pandas()

    def has_id_prefix(self, prefix: str) -> bool:
        """Whether any stored id starts with `prefix` (a range probe of the id index)."""
        dataset = self._dataset()
        if dataset is None:
            return False
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first string after every one starting with prefix
        return dataset.count_rows(filter=(pc.field("id") >= prefix) & (pc.field("id") < end)) > 0

    def by_ids(self, ids: list[str], columns: list[str] | None = None, where: pc.Expression | None = None
               ) -> pd.DataFrame:
        """The rows of these ids (absent ones left out; `where`: also matching this), through the id index:
        O(len(ids))."""
        frames = [self.read(columns, pc.field("id").isin(ids[i:i + PROBE_CHUNK])
                            if where is None else pc.field("id").isin(ids[i:i + PROBE_CHUNK]) & where)
                  for i in range(0, len(ids), PROBE_CHUNK)]
        return pd.concat(frames, ignore_index=True) if frames else self.read(columns).iloc[:0]

    # Writing --------------------------------------------------------------------------------
    def upsert(self, frame: pd.DataFrame, what: str = "ingest", *, new_ids_at: int | None = None) -> Upsert:
        """Merge `frame` by id as one commit. Rows identical to the stored ones count as unchanged (so a
        re-ingest is idempotent and commits nothing); the caller holds the workspace lock.

        `new_ids_at`: the caller knows that none of the frame's ids was stored at that version (an ingest of a
        source new to the collection, in parts); while the table is still at it, the ids are not probed."""
        frame = frame.drop_duplicates("id", keep="last").reset_index(drop=True)
        if not len(frame):
            return Upsert(0, 0, 0, None)
        table = _to_table(frame)
        dataset = self._dataset()
        if dataset is None:
            self._create(table)
            self._log("create", what, len(frame), 0, 0)
            version = self.version
            return Upsert(len(frame), 0, 0, version, new_ids_at=version if new_ids_at is not None else None)
        dataset = self.upgrade(dataset)  # a table written before curation: its columns first (rows must match)
        # Probing 10,000 ids in a large table costs time and memory; ids known new need none. Any commit since
        # (another writer, the edits applied first) and the probe is made as always.
        unseen = new_ids_at is not None and int(dataset.version) == new_ids_at
        stored = (pd.Series(dtype="float64") if unseen else self._stored_hashes(dataset, frame["id"].tolist()))
        known = stored.reindex(frame["id"]).to_numpy()
        new_hash = table["row_hash"].to_numpy()
        present = ~pd.isna(known)
        same = present & (np.where(present, known, 0).astype(np.uint64) == new_hash)
        added, updated, unchanged = int((~present).sum()), int((present & ~same).sum()), int(same.sum())
        if added + updated == 0:
            return Upsert(0, 0, unchanged, None)
        changed = table.filter(pa.array(~same))
        kept = 0
        if updated:
            moved = frame["id"][present & ~same].tolist()
            changed, kept = _keep_curation(changed, self._curation_of(dataset, moved))
        try:
            if updated:
                dataset.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(changed)
            else:  # additions only: a plain append, no join
                tables.write(changed, self.path, mode="append")
        except OSError as e:
            name_file(e, self.path)
            raise
        self._after_write()
        self._log("upsert", what, added, updated, unchanged, **({"kept_edits": kept} if kept else {}))
        version = self.version
        return Upsert(added, updated, unchanged, version, kept, new_ids_at=version if unseen else None)

    def replace(self, frame: pd.DataFrame, what: str = "replace") -> int:
        """Make `frame` the whole collection (one commit; earlier versions stay restorable)."""
        table = _to_table(frame.drop_duplicates("id", keep="last").reset_index(drop=True))
        dataset = self._dataset()
        if dataset is not None and _has_curation(dataset):  # the curated values of the ids that stay
            table, _ = _keep_curation(table, self.read(["id", *_KEPT], where="curated IS NOT NULL"))
        if dataset is None:
            self._create(table)
        else:
            tables.write(table, self.path, mode="overwrite")
            self._index()
        self._log("replace", what, len(table), 0, 0)
        return self.version

    def upgrade(self, dataset: Any | None = None) -> Any | None:
        """Add the curation columns to a table written before them (the caller holds the workspace lock): the
        source's values copied from label and tags, the rest null. Only the new columns' files are written,
        and each column is one commit, so a kill leaves a readable table that the next writer completes.
        Returns the current dataset (`dataset`, the caller's open one, when nothing had to change)."""
        dataset = dataset if dataset is not None else self._dataset()
        if dataset is None or _has_curation(dataset):
            return dataset
        copies = {name: name.removeprefix("source_") for name in ("source_label", "source_tags")
                  if name not in dataset.schema.names}
        if copies:
            dataset.add_columns(copies)
            dataset = self._dataset()
        dataset.add_columns([f for f in CURATION if f.name not in dataset.schema.names])
        return self._dataset()

    def _curation_of(self, dataset: Any, ids: list[str]) -> pd.DataFrame:
        """The curated values of those of `ids` a curator touched (an index probe, then the few rows)."""
        if not ids or not _has_curation(dataset):
            return _empty(["id", *_KEPT])
        return self.by_ids(ids, ["id", *_KEPT], where=pc.field("curated").is_valid())

    def _stored_hashes(self, dataset: Any, ids: list[str]) -> pd.Series:
        if len(ids) > SCAN_SHARE * dataset.count_rows():
            table = tables.read(dataset, self.path, FIX, columns=["id", "row_hash"])
        else:
            table = pa.concat_tables([tables.read(dataset, self.path, FIX, columns=["id", "row_hash"],
                                                  filter=pc.field("id").isin(ids[i:i + PROBE_CHUNK]))
                                      for i in range(0, len(ids), PROBE_CHUNK)])
        # object dtype: uint64 digests do not survive a float64 column (where absent ids become NaN)
        return pd.Series(table["row_hash"].to_numpy(), index=table["id"].to_numpy(zero_copy_only=False),
                         dtype=object)

    def _create(self, table: pa.Table) -> None:
        """The first commit, staged aside and renamed in: a crash leaves no half-created table. On object storage
        (no rename) the table is created in place: until its first manifest it does not exist for readers, and
        the next create clears what a crash left."""
        if is_remote(self.path):
            tables.write(table, self.path, mode="create")
            self._index()
            return
        staged = self.root / f".collection.lance.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tables.write(table, staged, mode="create")
            self._index(staged)
            staged.rename(self.path)
        except OSError as e:
            name_file(e, self.path)
            raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _index(self, path: Path | None = None) -> None:
        """BTREE indexes on id (upserts, item lookups) and on label and collection (the service's filters
        and counts): a probe instead of a scan, for any number of distinct values."""
        dataset = tables.open_table(path or self.path, FIX)
        if dataset.count_rows():
            for column in INDEXED:
                dataset.create_scalar_index(column, "BTREE")

    def _after_write(self) -> None:
        """Index the new fragment; merge fragments once there are many small ones (one per ingest)."""
        dataset = self._dataset()
        indexed = {tuple(i.field_names) for i in dataset.describe_indices()}
        if not all((c,) in indexed for c in INDEXED):
            self._index()
        elif tables.needs_compaction(dataset):
            tables.compact(dataset)
        else:
            tables.index_new_rows(dataset)

    def rows_by_ids(self, ids: list[str], columns: list[str] | None = None) -> pa.Table:
        """Whole stored rows (every column, the digest and curation included; or only `columns`) of these ids,
        through the index."""
        dataset = self._dataset()
        if dataset is None or not ids:
            return TABLE_SCHEMA.empty_table().select(columns or TABLE_SCHEMA.names)
        try:
            return pa.concat_tables([tables.read(dataset, self.path, FIX, columns=columns or TABLE_SCHEMA.names,
                                                 filter=pc.field("id").isin(ids[i:i + PROBE_CHUNK]))
                                     for i in range(0, len(ids), PROBE_CHUNK)])
        except tables.CorruptTable as e:
            raise CollectionError(str(e)) from e.__cause__

    def merge_small_fragments(self, above: int = tables.COMPACT_ABOVE_FRAGMENTS) -> bool:
        """Merge the small fragments edits leave once there are more than `above` (see `tables.compact_small`);
        the caller holds the workspace lock. Returns whether it merged."""
        dataset = self._dataset()
        if dataset is None or not tables.needs_compaction(dataset, above):
            return False
        tables.compact_small(dataset)
        return True

    def apply_curation(self, rows: list[dict[str, Any]], batches: list[str], current: pa.Table | None = None,
                       compact_above: int = tables.COMPACT_ABOVE_FRAGMENTS) -> None:
        """Write a curation batch's values (`rows`: id and the `_KEPT` columns) as one commit. Whole rows are
        merged (read by id, O(len(rows))): Lance then writes the changed rows to a new fragment and marks the
        old ones deleted, where a merge of some columns only rewrites those columns of every row of the
        fragments touched. `current`: those rows as the caller read them under the lock (else read here).
        `compact_above`: merge small fragments past this many (the service's writer merges them when idle).
        Idempotent, so an interrupted batch can simply be applied again."""
        dataset = self._dataset()
        if current is None:
            current = self.rows_by_ids([r["id"] for r in rows])
        current = current.filter(pc.is_in(current["id"], value_set=pa.array([r["id"] for r in rows], pa.string())))
        by_id = {r["id"]: r for r in rows}
        order = [by_id[i] for i in current["id"].to_pylist()]
        for name in _KEPT:
            current = current.set_column(current.schema.get_field_index(name), name,
                                         pa.array([r[name] for r in order], TABLE_SCHEMA.field(name).type))
        try:
            dataset.merge_insert("id").when_matched_update_all().execute(current)
        except OSError as e:
            name_file(e, self.path)
            raise
        # New rows are found by a scan of their small fragments until those are merged; indexing each
        # edit's fragment would cost more than the edit. Past many fragments, only the small ones merge.
        self.merge_small_fragments(compact_above)
        self._log("edit", f"curation batch{'es' if len(batches) > 1 else ''} {', '.join(batches[:3])}"
                  + (f" and {len(batches) - 3} more" if len(batches) > 3 else ""), 0, len(rows), 0, batches=batches)

    # History --------------------------------------------------------------------------------
    def _log(self, action: str, what: str, added: int, updated: int, unchanged: int, **extra: Any) -> None:
        entry = {"version": self.version, "at": datetime.now(UTC).isoformat(timespec="seconds"), "action": action,
                 "what": what, "added": added, "updated": updated, "unchanged": unchanged, **extra}
        line = json.dumps(entry, ensure_ascii=False)
        if is_remote(self.history_path):  # no append on object storage: one object per entry, named in order
            (self.root / "history.d" / f"{self.version:012d}-{uuid.uuid4().hex[:8]}.json").write_text(line)
            return
        with open(self.history_path, "a", encoding="utf-8") as fh:  # one short line: appended whole
            fh.write(line + "\n")

    def _logged_lines(self) -> list[str]:
        return list(self.logged_lines())

    def logged_lines(self, newest_first: bool = False) -> Iterator[str]:
        """What `_log` wrote, one JSON text per commit, oldest first (or newest first: on object storage an
        object is read only when the caller asks for the next one)."""
        if is_remote(self.history_path):
            folder = self.root / "history.d"
            paths = sorted(folder.iterdir(), reverse=newest_first) if folder.is_dir() else []
            yield from (path.read_text() for path in paths)
            return
        if self.history_path.exists():
            lines = self.history_path.read_text(encoding="utf-8").splitlines()
            yield from reversed(lines) if newest_first else lines

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest `limit` versions, newest first: Lance's version list joined with what curata logged."""
        dataset = self._dataset()
        if dataset is None:
            return []
        logged: dict[int, dict[str, Any]] = {}
        for line in self._logged_lines():
            try:
                entry = json.loads(line)
                logged[int(entry["version"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash
        versions = sorted(dataset.versions(), key=lambda v: v["version"], reverse=True)
        if logged:  # curata's own commits; the index updates Lance commits after each one are left out
            versions = [v for v in versions if int(v["version"]) in logged or int(v["version"]) == dataset.version]
        out = []
        for v in versions[:limit]:
            entry = logged.get(int(v["version"]), {})
            out.append({"version": int(v["version"]), "at": v["timestamp"].isoformat(timespec="seconds"),
                        "items": int(v["metadata"].get("total_rows", 0)),
                        "action": entry.get("action", "internal"), "what": entry.get("what", ""),
                        "added": entry.get("added"), "updated": entry.get("updated"),
                        "current": int(v["version"]) == int(dataset.version)})
        return out

    def rollback(self, version: int) -> int:
        """Make `version` the current one again, as a new commit (the versions after it stay listed)."""
        dataset = self._dataset()
        if dataset is None:
            raise CollectionError(f"{self.path} does not exist: nothing to roll back")
        known = {int(v["version"]) for v in dataset.versions()}
        if version not in known:
            raise CollectionError(f"{self.path} has no version {version} (it has {min(known)}..{max(known)}; "
                                  "`curata history` lists them)")
        self._dataset(version).restore()
        self._log("rollback", f"to version {version}", 0, 0, 0)
        return self.version

    def compact(self, keep_days: float | None = None) -> dict[str, int]:
        """Merge fragments; with `keep_days`, also drop versions older than that (they can no longer be
        rolled back to)."""
        dataset = self._dataset()
        if dataset is None:
            return {}
        keep = timedelta(days=keep_days) if keep_days is not None else None
        return tables.compact(dataset, keep_versions=keep)

    def repair(self) -> int:
        """Rewrite the table from its readable fragments; returns how many items were dropped (ingest their
        sources again to bring them back)."""
        dataset = self._dataset()
        if dataset is None:
            return 0
        kept, dropped = tables.readable_fragments(dataset)
        table = pa.concat_tables(kept) if kept else TABLE_SCHEMA.empty_table()
        tables.write(table, self.path, mode="overwrite")
        self._index()
        self._log("repair", "dropped unreadable fragments", 0, 0, 0, removed=dropped)
        return dropped

    # Conversion -----------------------------------------------------------------------------
    def convert_parquet(self) -> int | None:
        """Convert `collection.parquet` (a workspace written before Lance) once; the caller holds the
        workspace lock. The table is written aside, its ids verified against the file's, renamed in, and only
        then is the Parquet file moved to `collection.parquet.converted` (kept: delete it when satisfied).
        A kill at any point leaves either the Parquet file in use or a verified table. Returns the items
        converted, None when there was nothing to convert."""
        if not self.legacy_path.exists():
            return None
        if self.exists:  # verified and renamed in; a kill came before the Parquet file was moved
            self.legacy_path.replace(self.legacy_path.with_name("collection.parquet.converted"))
            return None
        frame = read_parquet_collection(self.legacy_path)
        staged = self.root / f".collection.lance.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tables.write(_to_table(frame), staged, mode="create", message="converted from collection.parquet")
            self._index(staged)
            ids = tables.open_table(staged, FIX).to_table(columns=["id"])["id"].to_pylist()
            if sorted(ids) != sorted(frame["id"]):
                raise CollectionError(f"converting {self.legacy_path} failed verification; it is left in place")
            staged.rename(self.path)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        self._log("convert", "from collection.parquet", len(frame), 0, 0)
        self.legacy_path.replace(self.legacy_path.with_name("collection.parquet.converted"))
        return len(frame)

    def stamp(self) -> tuple[int, str, str]:
        """Cheap change detection for readers that cache (the service), without opening the table: every
        commit (rollbacks included) adds a manifest to `_versions/`, so the count and the end names change."""
        try:
            names = [e.name for e in (self.path / "_versions").iterdir() if e.name.endswith(".manifest")]
        except OSError:
            return (-1, "", "")
        return (len(names), min(names, default=""), max(names, default=""))
