"""The items table: one row per item, stored as Parquet in the workspace.

Columns are fixed (see `COLUMNS`) so every stage can rely on them; anything a source carries beyond
them goes into `meta` (a JSON object string) rather than growing the schema per source.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curata.atomic import name_file, sync_file

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


def items_to_frame(items: list[Item]) -> pd.DataFrame:
    if not items:
        return empty_frame()
    table = pa.Table.from_pylist([it.to_row() for it in items], schema=SCHEMA)
    return table.to_pandas()


class CollectionError(ValueError):
    """The collection file is not a curata collection (another table, or damaged): one line, exit code 2."""


def read_collection(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The items table; a file of another schema or a damaged one is a CollectionError naming it (read with
    SCHEMA alone, a foreign table would come back as rows of nulls, and ingest would save them).
    `columns`: read only these (a searcher needs 7 of the 16: a tenth of the time on 10k items)."""
    if columns is not None:
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"not collection columns: {', '.join(unknown)}")
    if not path.exists():
        return empty_frame() if columns is None else empty_frame()[columns]
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


def write_collection(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a crash mid-write must not corrupt the existing collection."""
    table = pa.Table.from_pandas(frame[COLUMNS], schema=SCHEMA, preserve_index=False)
    # A temp name per writer: two processes sharing one fixed name could rename the other's
    # half-written file into place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        pq.write_table(table, tmp)
        sync_file(tmp)  # on disk before the rename: after a power cut, the old file or the new one, whole
        tmp.replace(path)
    except OSError as e:  # a full disk: say which file (pyarrow's error does not)
        name_file(e, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def upsert(existing: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, int, int, int]:
    """Merge `new` into `existing` by id. Returns (merged, added, updated, unchanged).

    Rows whose content is identical count as unchanged, so re-ingesting a source is idempotent.
    """
    if existing.empty:
        return new.reset_index(drop=True), len(new), 0, 0
    old = existing.set_index("id", drop=False)
    added = updated = unchanged = 0
    replacements: dict[str, dict[str, Any]] = {}
    additions: list[dict[str, Any]] = []
    for row in new.to_dict("records"):
        rid = row["id"]
        if rid not in old.index:
            additions.append(row)
            added += 1
        elif _same(old.loc[rid].to_dict(), row):
            unchanged += 1
        else:
            replacements[rid] = row
            updated += 1
    merged = existing
    if replacements:
        keep = ~existing["id"].isin(list(replacements))
        merged = pd.concat([existing[keep], pd.DataFrame(list(replacements.values()))], ignore_index=True)
    if additions:
        merged = pd.concat([merged, pd.DataFrame(additions)], ignore_index=True)
    return merged.reset_index(drop=True), added, updated, unchanged


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in COLUMNS:
        x, y = a.get(key), b.get(key)
        if hasattr(x, "tolist"):
            x = x.tolist()
        if hasattr(y, "tolist"):
            y = y.tolist()
        if (x is None or x != x) and (y is None or y != y):  # None / NaN on both sides
            continue
        if x != y:
            return False
    return True
