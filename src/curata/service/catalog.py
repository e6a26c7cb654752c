"""The collection as the service reads it: one version of the Lance table, queried per request.

Nothing is held whole: a page of items is a filtered scan with a limit (label, collection, tag and text
filters are SQL that Lance applies in the scan), one item is an index probe on its id, and the totals come
from the table's metadata. What is derived from features is computed for the rows asked for (a page's
dominant colours), or once per version and only for the content it has not seen (the colour index behind the
colour filter and facet, the facet counts), so a new version costs what it added, not the collection. Colours
come from the `object_palette` feature where the workspace has it (the object's colours: what /v1/colours
says), else from the whole-image `palette`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curata import tables
from curata.collection import COLUMNS, CURATION_COLUMNS, FIX, CollectionError
from curata.workspace import Workspace

PROBE_CHUNK = 8192
RECORD_CACHE = 4096  # item records kept per version (an item page, its image, thumbnail, features...)
COLOUR_CHUNK = 65_536  # palette vectors named per step when the colour index is built


def sql_text(value: str) -> str:
    """A string literal for a Lance SQL filter (values come from users: quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass
class ColourCache:
    """Dominant basic colour per (colour feature, image content hash), shared by successive versions of the
    collection (a new version names only the images it added). The feature is `object_palette` (the object's
    colours, as /v1/colours names them) or `palette` (the whole image, backdrop included). Only names are kept:
    an image with no vector yet is looked up again next time, so computing the feature later shows up."""

    by_hash: dict[tuple[str, str], str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self, workspace: Workspace, hashes: list[str], feature: str = "palette") -> list[str | None]:
        """Per hash, its dominant colour from `feature`; with `object_palette`, an image that has no object
        palette yet falls back to its `palette` name (None when it has neither)."""
        got = self._names(workspace, hashes, feature)
        if feature != "palette":
            missing = [h for h, n in zip(hashes, got, strict=True) if n is None]
            if missing:
                fallback = dict(zip(missing, self._names(workspace, missing, "palette"), strict=True))
                got = [fallback.get(h) if n is None else n for h, n in zip(hashes, got, strict=True)]
        return got

    def _names(self, workspace: Workspace, hashes: list[str], feature: str) -> list[str | None]:
        todo = [h for h in dict.fromkeys(hashes) if (feature, h) not in self.by_hash]
        if todo:
            named = _name_colours(workspace, todo, feature)
            with self.lock:
                self.by_hash.update({(feature, h): n for h, n in named.items()})
        return [self.by_hash.get((feature, h)) for h in hashes]


def _name_colours(workspace: Workspace, hashes: list[str], feature: str) -> dict[str, str]:
    """The dominant colour of each hash whose `feature` vector is stored (hashes without one are left out)."""
    from curata.features.engine import make_extractor
    from curata.features.store import FeatureStore
    from curata.tasks.colour import ZeroLabelColourNamer

    store = FeatureStore.for_extractor(workspace.root / "features", make_extractor(feature))
    namer = ZeroLabelColourNamer(feature=feature)
    out: dict[str, str] = {}
    for start in range(0, len(hashes), COLOUR_CHUNK):
        chunk = hashes[start:start + COLOUR_CHUNK]
        matrix, errors = store.lookup(chunk)
        ok = np.array([e is None for e in errors], bool)
        names = namer.predict(matrix[ok]) if ok.any() else []
        out.update({h: str(n) for h, n in zip(np.asarray(chunk, object)[ok], names, strict=True) if n})
    return out


class ItemsView:
    """One version of the collection (pinned: a later commit does not change what this view answers)."""

    def __init__(self, workspace: Workspace | None, dataset: Any, stamp: Any, colours: ColourCache):
        self.workspace = workspace
        self.dataset = dataset
        self.stamp = stamp
        self.colours = colours
        self.total = int(dataset.count_rows()) if dataset is not None else 0
        # The curation columns where the table has them (a table written before curation has none).
        names = set(dataset.schema.names) if dataset is not None else set()
        self.columns = COLUMNS + [c for c in CURATION_COLUMNS if c in names]
        self._records: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._lock = threading.Lock()
        self._facets: dict[str, Any] | None = None
        self._colour_ids: pd.Series | None = None  # id -> colour for the whole version, built on first need
        self._colour_ids_source: str | None = None  # the colour feature it was built from
        self._facets_source: str | None = None

    @classmethod
    def empty(cls) -> ItemsView:
        return cls(None, None, None, ColourCache())

    @classmethod
    def open(cls, workspace: Workspace, colours: ColourCache) -> ItemsView:
        """The current version. Its id column is read once: a version whose data files are damaged is refused
        here (the service then keeps serving the previous view) instead of failing request by request."""
        table = workspace.collection
        stamp = table.stamp()
        dataset = table.dataset()
        if dataset is None:
            return cls.empty()
        view = cls(workspace, dataset, stamp, colours)
        view._scan(columns=["id"])
        return view

    @property
    def colour_source(self) -> str | None:
        """The feature item colours are read from: `object_palette` where the workspace has it (the names
        /v1/colours gives), else the whole-image `palette`, else None (no colours)."""
        if self.workspace is None:
            return None
        from curata.features.object_palette import colour_feature

        return colour_feature(self.workspace.root / "features")

    @property
    def palette_ready(self) -> bool:
        return self.colour_source is not None

    # Reading ---------------------------------------------------------------------------------
    def _scan(self, **scan: Any) -> pa.Table:
        if self.dataset is None:
            return pa.table({c: pa.array([], pa.string()) for c in scan.get("columns") or ["id"]})
        try:
            return tables.read(self.dataset, self.workspace.collection_path, FIX, **scan)  # type: ignore[union-attr]
        except tables.CorruptTable as e:
            raise CollectionError(str(e)) from e.__cause__

    def record(self, item_id: str) -> dict[str, Any] | None:
        """One item's row (every column), or None; recent ones are cached."""
        with self._lock:
            if item_id in self._records:
                self._records.move_to_end(item_id)
                return self._records[item_id]
        rows = self._scan(columns=self.columns, filter=pc.field("id") == item_id).to_pylist()
        found = rows[0] if rows else None
        with self._lock:
            self._records[item_id] = found
            while len(self._records) > RECORD_CACHE:
                self._records.popitem(last=False)
        return found

    def __contains__(self, item_id: str) -> bool:
        return self.record(item_id) is not None

    def by_ids(self, ids: list[str]) -> pd.DataFrame:
        """Rows of `ids` in that order (absent ones left out)."""
        if not ids:
            return pd.DataFrame(columns=self.columns)
        parts = [self._scan(columns=self.columns, filter=pc.field("id").isin(ids[i:i + PROBE_CHUNK])).to_pandas()
                 for i in range(0, len(ids), PROBE_CHUNK)]
        frame = pd.concat(parts, ignore_index=True).set_index("id", drop=False)
        return frame.reindex([i for i in ids if i in frame.index]).reset_index(drop=True)

    def ids(self, where: str, limit: int | None = None) -> list[str]:
        """The ids of the items matching the SQL filter `where` (at most `limit`), in table order."""
        return self._scan(columns=["id"], filter=where, limit=limit)["id"].to_pylist()

    def page(self, where: str | None, offset: int, limit: int, ids: pa.Array | None = None
             ) -> tuple[int, pd.DataFrame]:
        """Items matching the SQL filter `where` (and, when given, whose id is in `ids`), in table order:
        (how many match, the rows of [offset, offset + limit))."""
        if self.dataset is None:
            return 0, pd.DataFrame(columns=self.columns)
        if ids is None:
            total = self.total if where is None else int(self.dataset.count_rows(filter=where))
            if offset >= total:
                return total, pd.DataFrame(columns=self.columns)
            return total, self._scan(columns=self.columns, filter=where, limit=limit, offset=offset).to_pandas()
        matched = self._scan(columns=["id"], filter=where)["id"].combine_chunks()
        matched = matched.filter(pc.is_in(matched, value_set=ids))
        return len(matched), self.by_ids(matched[offset:offset + limit].to_pylist())

    # Derived from features ---------------------------------------------------------------------
    def colours_of(self, frame: pd.DataFrame) -> list[str | None]:
        source = self.colour_source if len(frame) else None
        if self.workspace is None or source is None:
            return [None] * len(frame)
        return self.colours.names(self.workspace, [str(h) for h in frame["image_sha256"]], source)

    def ids_with_colour(self, colour: str) -> pa.Array:
        index = self.colour_index()
        return pa.array(index.index[index.to_numpy() == colour].to_numpy(), pa.string())

    def colour_index(self) -> pd.Series:
        """id -> dominant colour for the whole version (built once, naming only content not seen before)."""
        source = self.colour_source
        with self._lock:
            # Rebuilt when the source changes (object_palette computed while this version is served), so the
            # filter and facet keep agreeing with the item pages.
            if self._colour_ids is not None and self._colour_ids_source == source:
                return self._colour_ids
        table = self._scan(columns=["id", "image_sha256"])
        hashes = table["image_sha256"].to_pylist()
        names = (self.colours.names(self.workspace, hashes, source)  # type: ignore[arg-type]
                 if source is not None and hashes else [None] * len(hashes))
        index = pd.Series(names, index=table["id"].to_numpy(zero_copy_only=False), dtype=object)
        with self._lock:
            self._colour_ids, self._colour_ids_source = index, source
        return index

    def palette(self, record: dict[str, Any], feature: str = "palette") -> np.ndarray | None:
        """One item's `feature` vector (`palette` or `object_palette`), or None when it has not been computed."""
        if self.workspace is None:
            return None
        from curata.features.engine import make_extractor
        from curata.features.store import FeatureStore

        store = FeatureStore.for_extractor(self.workspace.root / "features", make_extractor(feature))
        matrix, errors = store.lookup([str(record["image_sha256"])])
        return matrix[0] if errors[0] is None else None

    def colour_vector(self, record: dict[str, Any]) -> tuple[str, np.ndarray] | None:
        """(feature, vector) for one item's colours: its object palette where computed, else its palette (the
        same per-item fallback as the colour index), else None."""
        source = self.colour_source
        for feature in dict.fromkeys(f for f in (source, "palette") if f is not None):
            vector = self.palette(record, feature)
            if vector is not None:
                return feature, vector
        return None

    def facets(self, top: int) -> dict[str, Any]:
        """Counts of labels, collections, tags and colours over the version (computed once per version)."""
        source = self.colour_source
        with self._lock:
            cached = self._facets if self._facets_source == source else None
        if cached is None:
            table = self._scan(columns=["label", "collection", "tags"])
            tags = pc.list_flatten(table["tags"].combine_chunks()) if len(table) else pa.array([], pa.string())
            colours = self.colour_index() if source is not None else pd.Series([], dtype=object)
            cached = {"labels": _counts(table["label"]), "collections": _counts(table["collection"]),
                      "tags": _counts(tags), "colours": _counts(pa.array(colours.to_list(), pa.string()))}
            with self._lock:
                self._facets, self._facets_source = cached, source
        return {name: dict(list(values.items())[:top]) for name, values in cached.items()}


def _counts(values: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Non-empty values by count, most common first (ties in first-seen order, as pandas counts)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    counts = pc.value_counts(values.filter(pc.and_(pc.is_valid(values), pc.not_equal(values, ""))))
    if not len(counts):
        return {}
    frame = pd.DataFrame({"v": counts.field("values").to_pylist(), "n": counts.field("counts").to_numpy()})
    frame = frame.sort_values("n", ascending=False, kind="stable")
    return dict(zip(frame["v"].astype(str), frame["n"].astype(int), strict=True))
