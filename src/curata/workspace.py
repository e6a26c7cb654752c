"""The workspace: a folder holding a collection and everything computed from it, or the same layout under a
prefix on object storage (`s3://bucket/prefix`: `curata.storage`).

    curata-workspace/
      collection.lance/    the items table, a versioned Lance table (curata.collection)
      history.jsonl        what each version of the collection was (ingest of which source, counts)
      features/            cached feature vectors, one folder per extractor key
      models/              trained bundles and fitted extractors
      index/               vector indexes
      reports/             ingest reports, evaluation reports
      clusters/            cluster runs, near-duplicate groups, tag themes
      cache/               downloaded images
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from curata.atomic import atomic_write_text
from curata.collection import Collection, Upsert
from curata.storage import StorePath, hold, location

DEFAULT_WORKSPACE = "curata-workspace"
SUBDIRS = ("features", "models", "index", "reports", "cache")


def default_workspace() -> str:
    return os.environ.get("CURATA_WORKSPACE", DEFAULT_WORKSPACE)


class Workspace:
    def __init__(self, root: str | Path | StorePath | None = None):
        # A local folder (`Path`) or a prefix on object storage (`StorePath`, see curata.storage).
        self.root: Any = location(root if root is not None else default_workspace())
        if (self.root / "plugins.json").is_file():  # the plug-in paths its features were computed with
            from curata.features.plugins import read_plugin_paths, use_plugin_paths

            use_plugin_paths(read_plugin_paths(self.root))

    # Layout ---------------------------------------------------------------------------------
    @property
    def collection_path(self) -> Path:
        return self.root / "collection.lance"

    def dir(self, name: str) -> Path:
        """One of the workspace sub-folders, created on first use."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create(self) -> Workspace:
        for sub in SUBDIRS:
            self.dir(sub)
        return self

    @property
    def exists(self) -> bool:
        return self.collection_path.exists() or (self.root / "collection.parquet").exists()

    # Collection -----------------------------------------------------------------------------
    @property
    def collection(self) -> Collection:
        """The items table as readers see it: a workspace written before Lance is converted here, once, and
        edits a writer journaled and has not applied yet are applied first (both under the lock). Not for
        code that holds the lock: it uses `Collection(root)`."""
        table = Collection(self.root)
        if table.legacy_path.exists():
            with self.lock():
                table.convert_parquet()
        from curata.curation import settle  # imported here: curation builds on the workspace

        settle(self)
        return table

    def items(self, columns: list[str] | None = None, where: Any = None, include_excluded: bool = False
              ) -> pd.DataFrame:
        """The collection as the stages read it: curated values where a curator set them, without the items a
        curator excluded or marked as duplicates unless `include_excluded` (`columns`: only these, in this
        order; `where`: a filter applied in the scan)."""
        return self.collection.read(columns, where, active_only=not include_excluded)

    def has_text(self) -> bool:
        """Whether any active item has a text (image-only collections default to image features)."""
        return len(self.collection.read(["id"], "text IS NOT NULL AND text != ''", limit=1, active_only=True)) > 0

    def upsert_items(self, frame: pd.DataFrame, what: str = "ingest", *, new_ids_at: int | None = None) -> Upsert:
        """`add_items`, with the whole outcome (the commit, how many items kept a curator's edit). `new_ids_at`:
        see `Collection.upsert`."""
        self.create()
        with self.lock():
            table = Collection(self.root)
            table.convert_parquet()  # a workspace written before Lance: its items first
            self.apply_edits()
            return table.upsert(frame, what, new_ids_at=new_ids_at)

    def add_items(self, frame: pd.DataFrame, what: str = "ingest") -> tuple[int, int, int]:
        """Upsert items by id as one commit; returns (added, updated, unchanged). Holds the workspace lock, so
        two concurrent ingests cannot lose each other's items."""
        result = self.upsert_items(frame, what)
        return result.added, result.updated, result.unchanged

    def replace_items(self, frame: pd.DataFrame, what: str = "replace") -> int:
        """Make `frame` the whole collection (one commit; `curata rollback` can restore the one before)."""
        self.create()
        with self.lock():
            table = Collection(self.root)
            table.convert_parquet()  # so the Parquet file is not converted over the replacement later
            self.apply_edits()
            return table.replace(frame, what)

    def apply_edits(self) -> None:
        """Journaled edits into the table before anything else changes it (the caller holds the lock): the
        source's new values and the curated ones are then kept apart as for any stored edit, and no commit
        runs beside the service's applying of edits (`Curation.apply_journal`)."""
        from curata.curation import Curation  # imported here: curation builds on the workspace

        Curation(self).apply_journal(holding_lock=True)

    @contextmanager
    def lock(self, name: str = "", on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold an exclusive lock across processes: the collection's (`.lock`), or a named one (`.lock-<name>`,
        e.g. one per feature extractor). `on_wait` is called once if another process holds it."""
        with hold(self.root / (f".lock-{name}" if name else ".lock"), on_wait):  # a flock, or a lease on a bucket
            yield

    # Reports --------------------------------------------------------------------------------
    def write_report(self, kind: str, payload: dict[str, Any]) -> Path:
        """Write reports/<kind>-<timestamp>.json and reports/<kind>-latest.json."""
        reports = self.dir("reports")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        text = json.dumps(payload, indent=2, ensure_ascii=False, default=str)
        path = reports / f"{kind}-{stamp}.json"
        atomic_write_text(path, text)  # a crash must not leave a torn report for tools that read -latest
        atomic_write_text(reports / f"{kind}-latest.json", text)
        return path
