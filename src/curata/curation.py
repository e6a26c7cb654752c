"""A curator's edits as data: curated values beside the source's, an append-only edit log, undo.

    curata-workspace/
      collection.lance/     label / tags hold the curated value where there is one; source_label /
                            source_tags the source's; curated, excluded, duplicate_of, edit_version
      edits.lance/          the edit log: one row per (item, field) an edit changed, never rewritten
      edits-journal.jsonl   edits acknowledged and not yet in the two tables (curata.edit_journal)

An edit is one batch: every item it changes gets one log row per field (who, when, why, before, after) and
its `edit_version` (its ETag) goes up by one. A write (one batch, or a group of them from `apply_many`) is
one fsynced journal line, and is then applied to the tables: the log first, then the collection.
- From the command line it is applied at once.
- The service's writer (`defer=True`) acknowledges after the journal line and applies many writes together
  a moment later. A write costs ~1 ms of fsync instead of two commits.
- Every reader first applies what the journal holds (`settle`, called by `Workspace.collection`), and
  writers read the journal's values over the table's, so nobody sees an acknowledged edit missing.
- A kill while the tables are written is finished by the next writer or reader: the log append is skipped
  when it landed, and the collection update is idempotent. So a kill never leaves an edit half applied.
Undo is itself an edit that puts the `before` values back (a field the edit was the first to curate goes
back to following the source).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curata import tables
from curata.collection import Collection, plain_value
from curata.edit_journal import EditJournal
from curata.workspace import Workspace

FIELDS = ("label", "tags", "excluded", "duplicate_of")
SOURCE_FIELDS = ("label", "tags")  # the fields a source also sets: uncurated, they follow the source
LOG = "edits.lance"
PENDING = "edits-pending.json"  # a write of a release before the journal, interrupted between its commits
APPLY_LOCK = "edits"  # held while the journal's edits are committed (`Workspace.lock(APPLY_LOCK)`)
FIX = "move edits.lance aside to start a new log (the collection keeps its curated values)"
LOG_SCHEMA = pa.schema([
    ("edit_id", pa.string()), ("batch", pa.string()), ("seq", pa.int64()),
    ("at", pa.timestamp("ms", tz="UTC")), ("who", pa.string()), ("why", pa.string()),
    ("item", pa.string()), ("field", pa.string()),
    ("before", pa.string()), ("after", pa.string()),  # JSON values
    ("was_curated", pa.bool_()),  # whether the field had a curated value before this edit (undo needs it)
    ("version", pa.int32()),  # the item's edit_version after this batch
    ("undoes", pa.string()),  # the batch or edit ids an undo reverses
])
_ROW = ["id", "label", "tags", "source_label", "source_tags", "curated", "excluded", "duplicate_of", "edit_version"]
MAX_TAG_CHARS = 200


class EditError(ValueError):
    """An edit that cannot be applied (unknown item or field, a bad value): nothing was written."""


class EditConflict(EditError):
    """An item changed since the caller read it (its edit_version is not the one the caller expected)."""

    def __init__(self, item: str, expected: int, current: int):
        super().__init__(f"item {item} changed since it was read (version {expected}, now {current}); "
                         "read it again and redo the edit")
        self.item, self.expected, self.current = item, expected, current


@dataclass
class Change:
    """One requested change: label `set` (a string, or None for no label) / `revert` (follow the source
    again); tags `add` / `remove` / `set` (a list) / `revert`; excluded `set` (bool); duplicate_of `set` (an
    item id, or None)."""

    field: str
    op: str = "set"
    value: Any = None


@dataclass
class EditJob:
    """One edit request: `changes` to every item of `ids`, by `who`, for `why`; `expected`: item -> the
    edit_version the caller read (a different one is a conflict)."""

    ids: list[str]
    changes: list[Change]
    who: str
    why: str = ""
    expected: dict[str, int] | None = None


@dataclass
class EditResult:
    batch: str | None  # None when nothing changed
    edits: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # every named item's edit_version now
    unchanged: list[str] = field(default_factory=list)  # named items the edit left as they were

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "edits": self.edits, "versions": self.versions,
                "changed": len({e["item"] for e in self.edits}), "unchanged": len(self.unchanged)}


def changes_from(body: dict[str, Any]) -> list[Change]:
    """Changes from a request: {"label": "x" | null, "tags": [...], "add_tags": [...], "remove_tags": [...],
    "excluded": bool, "duplicate_of": "id" | null, "revert": ["label", "tags"]}."""
    changes: list[Change] = []
    for key, value in body.items():
        if key == "label":
            changes.append(Change("label", "set", value))
        elif key in ("tags", "add_tags", "remove_tags"):
            changes.append(Change("tags", {"tags": "set", "add_tags": "add", "remove_tags": "remove"}[key], value))
        elif key in ("excluded", "duplicate_of"):
            changes.append(Change(key, "set", value))
        elif key == "revert":
            changes.extend(Change(str(f), "revert") for f in (value or []))
        else:
            raise EditError(f"unknown edit field '{key}' (label, tags, add_tags, remove_tags, excluded, "
                            "duplicate_of, revert)")
    if not changes:
        raise EditError("the edit changes nothing: name at least one field")
    for change in changes:
        _check(change)
    return changes


def _check(change: Change) -> None:
    if change.field not in FIELDS:
        raise EditError(f"unknown edit field '{change.field}' ({', '.join(FIELDS)})")
    if change.op == "revert":
        if change.field not in SOURCE_FIELDS:
            raise EditError(f"only {' and '.join(SOURCE_FIELDS)} can be reverted to the source's value")
        return
    value = change.value
    if change.field == "label" and value is not None and (not isinstance(value, str) or not value.strip()):
        raise EditError("label must be a non-empty string, or null for no label")
    if change.field == "tags":
        if change.op not in ("add", "remove", "set"):
            raise EditError(f"tags take add, remove or set, not {change.op}")
        if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
            raise EditError("tags must be a list of non-empty strings")
        if any(len(t) > MAX_TAG_CHARS for t in value):
            raise EditError(f"a tag is longer than {MAX_TAG_CHARS} characters")
    if change.field == "excluded" and not isinstance(value, bool):
        raise EditError("excluded must be true or false")
    if change.field == "duplicate_of" and value is not None and (not isinstance(value, str) or not value):
        raise EditError("duplicate_of must be an item id, or null")


class Curation:
    """Edits of one workspace's collection (see the module doc). Writers hold the workspace lock."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.root / LOG
        self.pending = workspace.root / PENDING
        self.journal = EditJournal(workspace.root)

    # Writing ------------------------------------------------------------------------------------
    def apply(self, ids: Iterable[str], changes: list[Change], who: str, why: str = "",
              expected: dict[str, int] | None = None) -> EditResult:
        """Apply `changes` to every item of `ids` as one batch. `expected`: the edit_version each item had
        when the caller read it; any other current version raises EditConflict and nothing is written."""
        return self.apply_job(EditJob(list(ids), changes, who, why, expected))

    def apply_job(self, job: EditJob) -> EditResult:
        """`apply` of one EditJob: written at once, its error raised."""
        result = self.apply_many([job])[0]
        if isinstance(result, EditError):
            raise result
        return result

    def apply_many(self, jobs: list[EditJob], compact_above: int = tables.COMPACT_ABOVE_FRAGMENTS,
                   defer: bool = False) -> list[EditResult | EditError]:
        """Several edits, each its own batch (its own result, conflict check and undo), written together as
        one journal line (group commit: how the service absorbs many small concurrent edits). Later jobs see
        the earlier ones' values; a job that fails (unknown item, stale version) writes nothing and the others
        go on. `defer`: leave the line for a later `apply_journal` (the tables are not written now; every
        reader applies it first). `compact_above`: see `Collection.apply_curation`."""
        for job in jobs:
            for change in job.changes:
                _check(change)
        with self.workspace.lock():
            collection = self._ready()
            wanted = list(dict.fromkeys(i for job in jobs for i in job.ids))
            state = self._state(collection, wanted, self._journaled())
            results: list[EditResult | EditError] = []
            staged: list[dict[str, Any]] = []
            for job in jobs:
                try:
                    plan = self._plan(collection, state, job)
                except EditError as e:
                    results.append(e)
                    continue
                result, log_rows = self._stage(state, plan, job.who, job.why, undoes=None)
                results.append(result)
                staged.extend(log_rows)
            self._write(collection, state, staged, compact_above, defer)
        return results

    def apply_journal(self, compact_above: int = tables.COMPACT_ABOVE_FRAGMENTS, holding_lock: bool = False
                      ) -> bool:
        """Write the journaled edits into the tables. The workspace lock is taken only to move the journal
        aside (`holding_lock`: the caller holds it already), the apply lock for the commits: edits are
        journaled meanwhile. Whoever changes the collection otherwise (ingest, rollback, compaction) calls this
        under the workspace lock first, so no commit of theirs runs beside an apply. Returns whether there was
        anything to apply."""
        if not self.journal.pending() and not self.pending.is_file():
            return False
        self._apply_journal(None, compact_above, holding_lock)
        return True

    def _apply_journal(self, collection: Collection | None, compact_above: int, holding_lock: bool) -> None:
        """`apply_journal`; `collection`: the one `_ready` gave a caller holding the lock (not opened again)."""
        for _ in range(2):  # a file another applier (or a killed one) left first, then the journal
            with contextlib.nullcontext() if holding_lock else self.workspace.lock():
                collection = collection or self._ready()
                self.journal.rotate()
            with self.workspace.lock(APPLY_LOCK):
                self._apply_file(collection, compact_above)
            if not self.journal.pending():
                break

    def undo(self, who: str, batch: str | None = None, edit_ids: list[str] | None = None, why: str = ""
             ) -> EditResult:
        """Put back what a batch (or these edits) changed, as a new batch. A field the undone edit was the first
        to curate follows the source again."""
        if not batch and not edit_ids:
            raise EditError("name a batch or edit ids to undo")
        with self.workspace.lock():
            collection = self._ready()
            # The log and the table complete: what is undone is read there.
            self._apply_journal(collection, tables.COMPACT_ABOVE_FRAGMENTS, holding_lock=True)
            undone = self.log(batch=batch, edit_ids=edit_ids, limit=None)
            if not undone:
                raise EditError(f"no edit {'batch ' + batch if batch else ', '.join(edit_ids or [])} in the log")
            if edit_ids:
                found = {e["edit_id"] for e in undone}
                absent = [e for e in edit_ids if e not in found]
                if absent:
                    raise EditError(f"no edit {absent[0]} in the log")
            first: dict[tuple[str, str], dict[str, Any]] = {}
            for edit in sorted(undone, key=lambda e: e["seq"]):  # the earliest edit of a field has its before
                first.setdefault((edit["item"], edit["field"]), edit)
            state = self._state(collection, list(dict.fromkeys(item for item, _ in first)), {})
            plan: dict[str, dict[str, tuple[Any, bool]]] = {}
            for (item, name), edit in first.items():
                if item not in state:
                    continue  # the item is gone from the collection: nothing to put back
                before, curated = edit["before"], bool(edit["was_curated"])
                if name in SOURCE_FIELDS and not curated:
                    before = state[item][f"source_{name}"]
                plan.setdefault(item, {})[name] = (before, curated)
            reason = why or (f"undo of batch {batch}" if batch else f"undo of {', '.join(edit_ids or [])}")
            result, log_rows = self._stage(state, plan, who, reason, undoes=batch or ",".join(edit_ids or []))
            self._write(collection, state, log_rows)
        return result

    def _ready(self) -> Collection:
        """The collection, with the work a kill interrupted finished (the caller holds the lock)."""
        collection = Collection(self.workspace.root)
        collection.convert_parquet()  # a workspace written before Lance (under the lock already held)
        if not collection.exists:
            raise EditError("the workspace has no collection: ingest one first")
        collection.upgrade()
        self._finish_pending(collection)
        return collection

    def current(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The items' current values (`_ROW`) as plain Python, by id: the table's with the journal's edits over
        them. Nothing is applied, so a by-id read beside a busy writer costs no commit."""
        return self._state(Collection(self.workspace.root), list(dict.fromkeys(ids)), self._journaled())

    def _journaled(self) -> dict[str, dict[str, Any]]:
        """The values the journal's writes set, by item (the newest write of an item wins)."""
        return {row["id"]: row for entry in self.journal.entries() for row in entry["rows"]}

    @staticmethod
    def _state(collection: Collection, ids: list[str], journaled: dict[str, dict[str, Any]]
               ) -> dict[str, dict[str, Any]]:
        """The items' current values as plain Python, by id: the table's, with the values of writes still in
        the journal over them (read first: an apply finishing meanwhile is then in the table). The edits of a
        group update the values as they are staged."""
        table = collection.rows_by_ids(ids, _ROW)
        state = {row["id"]: {name: (_version(row[name]) if name == "edit_version" else _value(name, row[name]))
                             for name in _ROW} for row in table.to_pylist()}
        for item, row in state.items():
            if item in journaled:
                row.update({name: (_version(value) if name == "edit_version" else _value(name, value))
                            for name, value in journaled[item].items() if name != "id"})
        return state

    def _plan(self, collection: Collection, state: dict[str, dict[str, Any]], job: EditJob
              ) -> dict[str, dict[str, tuple[Any, bool]]]:
        ids = list(dict.fromkeys(job.ids))
        if not ids:
            raise EditError("no items to edit")
        absent = [i for i in ids if i not in state]
        if absent:
            raise EditError(f"no item {absent[0]} in the collection" +
                            (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""))
        for item, version in (job.expected or {}).items():
            if item in state and state[item]["edit_version"] != int(version):
                raise EditConflict(item, int(version), state[item]["edit_version"])
        targets = [c.value for c in job.changes if c.field == "duplicate_of" and c.value]
        if targets:
            known = set(collection.by_ids(targets, ["id"])["id"])
            if any(t not in known for t in targets):
                raise EditError(f"duplicate_of names no item: {next(t for t in targets if t not in known)}")
            if any(t in ids for t in targets):
                raise EditError("an item cannot be a duplicate of itself")
        return {item: self._resolve_all(state[item], job.changes) for item in ids}

    @classmethod
    def _resolve_all(cls, row: dict[str, Any], changes: list[Change]) -> dict[str, tuple[Any, bool]]:
        """Each field's new value, the changes applied in order (add and remove tags in one edit both count)."""
        fields: dict[str, tuple[Any, bool]] = {}
        for change in changes:
            fields[change.field] = cls._resolve(row, change)
            row = {**row, change.field: fields[change.field][0]}
        return fields

    @staticmethod
    def _resolve(row: dict[str, Any], change: Change) -> tuple[Any, bool]:
        """The field's new value and whether it is curated afterwards."""
        if change.op == "revert":
            return row[f"source_{change.field}"], False
        if change.field != "tags":
            return change.value, True
        current = row["tags"]
        tags = [t.strip() for t in change.value]
        if change.op == "add":
            new = current + [t for t in dict.fromkeys(tags) if t not in current]
        elif change.op == "remove":
            new = [t for t in current if t not in set(tags)]
        else:
            new = list(dict.fromkeys(tags))
        return new, True

    @staticmethod
    def _stage(state: dict[str, dict[str, Any]], plan: dict[str, dict[str, tuple[Any, bool]]], who: str, why: str,
               undoes: str | None) -> tuple[EditResult, list[dict[str, Any]]]:
        """One batch: its log rows, its result, and `state` updated to the values it sets."""
        batch = f"b-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        at = pd.Timestamp.now(tz="UTC").floor("ms")  # the log's precision: the same time before and after applying
        seq = time.time_ns()
        log_rows: list[dict[str, Any]] = []
        versions, unchanged = {}, []
        for item, fields in plan.items():
            row = state[item]
            curated = set(row["curated"])
            new = {name: row[name] for name in ("label", "tags", "excluded", "duplicate_of")}
            edits = []
            for name, (value, now_curated) in fields.items():
                was = name in curated
                if value == new[name] and was == now_curated:
                    continue
                edits.append((name, new[name], value, was))
                new[name] = value
                (curated.add if now_curated else curated.discard)(name)
            if not edits:
                unchanged.append(item)
                versions[item] = row["edit_version"]
                continue
            version = versions[item] = row["edit_version"] + 1
            for name, before, after, was in edits:
                log_rows.append({"edit_id": f"e-{uuid.uuid4().hex[:12]}", "batch": batch, "seq": seq + len(log_rows),
                                 "at": at, "who": who, "why": why, "item": item, "field": name,
                                 "before": json.dumps(before), "after": json.dumps(after), "was_curated": was,
                                 "version": version, "undoes": undoes})
            state[item] = {**row, **new, "curated": sorted(curated, key=FIELDS.index), "edit_version": version,
                           "_changed": True}
        if not log_rows:
            return EditResult(None, [], versions, unchanged), []
        return EditResult(batch, [_public(r) for r in log_rows], versions, unchanged), log_rows

    def _write(self, collection: Collection, state: dict[str, dict[str, Any]], log_rows: list[dict[str, Any]],
               compact_above: int = tables.COMPACT_ABOVE_FRAGMENTS, defer: bool = False) -> None:
        """The staged batches as one journal line, then (unless `defer`) applied to the tables."""
        if not log_rows:
            return
        written = [{"id": item, "label": row["label"], "tags": row["tags"], "curated": row["curated"] or None,
                    "excluded": row["excluded"] or None, "duplicate_of": row["duplicate_of"],
                    "edit_version": row["edit_version"]} for item, row in state.items() if row.get("_changed")]
        self.journal.append({"batches": list(dict.fromkeys(r["batch"] for r in log_rows)),
                             "log": [{**r, "at": r["at"].isoformat()} for r in log_rows], "rows": written})
        if not defer:
            self._apply_journal(collection, compact_above, holding_lock=True)

    def _apply_file(self, collection: Collection, compact_above: int) -> None:
        """The journal file being applied, if any (under the apply lock): its log rows in one append (skipped
        when a kill came after it), then the items' newest values in one collection commit (idempotent), then
        the file is deleted."""
        if not self.journal.applying.is_file():
            return
        entries = self.journal.applying_entries()
        if entries:
            batches = [b for entry in entries for b in entry["batches"]]
            if not self._logged(batches[0]):
                self._append_log([{**r, "at": datetime.fromisoformat(r["at"])}
                                  for entry in entries for r in entry["log"]])
            rows = list({row["id"]: row for entry in entries for row in entry["rows"]}.values())
            collection.apply_curation(rows, batches, compact_above=compact_above)
        self.journal.applied()

    def _append_log(self, rows: list[dict[str, Any]]) -> None:
        log = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
        if tables.exists(self.path):
            tables.write(log, self.path, mode="append")
        else:
            created = tables.write(log, self.path, mode="create")
            for column in ("item", "batch"):  # an item's history, a batch to undo: probes, not scans
                created.create_scalar_index(column, "BTREE")

    def _logged(self, batch: str) -> bool:
        return bool(self._read_log(pc.field("batch") == batch, limit=1))

    def _finish_pending(self, collection: Collection) -> None:
        """Complete the batches a kill interrupted after their log commit; forget those whose log commit never
        came (one append holds every batch of a group, so one tells for all)."""
        try:
            pending = json.loads(self.pending.read_text())
            batches = pending.get("batches") or [pending["batch"]]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):  # torn: the log commit cannot have happened (written first)
            self.pending.unlink(missing_ok=True)
            return
        if self._logged(batches[0]):
            collection.apply_curation(pending["rows"], batches)
        self.pending.unlink(missing_ok=True)

    # Reading ------------------------------------------------------------------------------------
    def log(self, item: str | None = None, batch: str | None = None, edit_ids: list[str] | None = None,
            limit: int | None = 100) -> list[dict[str, Any]]:
        """Edits, newest first: of one item (through the log's item index), one batch, these ids, or all;
        with the journal's edits not yet applied."""
        where = None
        if item is not None:
            where = pc.field("item") == item
        if batch is not None:
            where = pc.field("batch") == batch if where is None else where & (pc.field("batch") == batch)
        if edit_ids:
            ids = pc.field("edit_id").isin(edit_ids)
            where = ids if where is None else where & ids
        # The journal before the table: an apply finishing in between then shows its rows in the table.
        waiting = [r for entry in self.journal.entries() for r in entry["log"]
                   if (item is None or r["item"] == item) and (batch is None or r["batch"] == batch)
                   and (not edit_ids or r["edit_id"] in edit_ids)]
        rows = {r["edit_id"]: r for r in self._read_log(where)}
        for r in waiting:  # one applied and not yet forgotten is in both: counted once
            rows.setdefault(r["edit_id"], r)
        ordered = sorted(rows.values(), key=lambda r: r["seq"], reverse=True)
        return [_public(r) for r in (ordered if limit is None else ordered[:limit])]

    def _read_log(self, where: pc.Expression | None, limit: int | None = None) -> list[dict[str, Any]]:
        if not tables.exists(self.path):
            return []
        dataset = tables.open_table(self.path, FIX)
        return tables.read(dataset, self.path, FIX, filter=where, limit=limit).to_pylist()

    def count(self) -> int:
        waiting = self.journal.waiting_entries()
        applying = self.journal.applying_entries()
        if applying and self._logged(applying[0]["batches"][0]):  # its log append landed already
            applying = []
        stored = tables.open_table(self.path, FIX).count_rows() if tables.exists(self.path) else 0
        return stored + sum(len(entry["log"]) for entry in applying + waiting)


def settle(workspace: Workspace) -> bool:
    """Apply the edits a writer journaled and has not applied yet (the first step of every reader of the
    collection, `Workspace.collection`, so an acknowledged edit is never missing). Costs a `stat` when there
    are none. Returns whether there were any."""
    return Curation(workspace).apply_journal()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A log row as callers see it: values decoded, the time as ISO text."""
    at = row["at"]
    return {**row, "before": json.loads(row["before"]), "after": json.loads(row["after"]),
            "at": at.isoformat() if hasattr(at, "isoformat") else str(at)}


def _value(name: str, value: Any) -> Any:
    """A stored field as a plain Python value (tags and curated as lists, never None)."""
    plain = plain_value(name, value)
    if name in ("tags", "curated", "source_tags"):
        return plain or []
    if name == "excluded":
        return bool(plain)
    return plain


def _version(value: Any) -> int:
    plain = plain_value("edit_version", value)
    return 0 if plain is None else int(plain)


def workspace_editor() -> str:
    """Who edits from the command line: $CURATA_EDITOR, else the login name."""
    return os.environ.get("CURATA_EDITOR") or os.environ.get("USER") or "cli"
