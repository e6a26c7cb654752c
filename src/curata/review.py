"""Review queues: what curata computed that a curator should act on, one proposal at a time.

    labels      suspicious labels of the newest quality run (reports/quality-latest.json, target label):
                set the suggested label; score = 1 - P(current label), the confidence that it is wrong
    tags        tags the newest `tags` bundle predicts (at or above the tag's tuned threshold and
                MIN_TAG_SCORE) that the item lacks: add the tag; score = P(tag); one proposal per (item, tag)
    duplicates  near-duplicate groups (the newest clusters/duplicates-<method>.json): mark an item
                `duplicate_of` its group's kept item (the largest image, then the smallest id, among the
                group's active items); score = how sure the group is (exact copies 1.0)
    outliers    items far from their class in the newest quality run: exclude them; score = robust z
    uncertain   "label these next": items the newest bundle predicting `label` is least sure of (score =
                1 - (p1 - p2), the margin between its two best labels); accept sets its top label

A queue's raw proposals are computed once per source and cached in `cache/review/<queue>.json` under a key
of what they came from (the quality or duplicates file's mtime and size; the bundle's name and card digest;
for queues that read the items, the collection's *content* version: that of its last commit that was not a
curation edit, so accepting a proposal does not recompute the predictions). Every call then drops, from
the decisions table and the current values of the proposals' items only (read by id), the ones already
decided and the ones no longer true (a tag the item now has, a label already equal to the proposal or no
longer the one the run judged, an item excluded or marked as a duplicate since).

Decisions are kept in `review.lance` (workspace root), append-only, one commit per decision: accept and
reject rows, and `undo` rows naming the decision they take back (`undoes`). A rejection holds for the
(item, field, value) in every queue, across rebuilds. `skip` writes nothing: the proposal moves to the end of
its queue for the rest of this process (the service's lifetime, a CLI run), then comes back in score order.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curata import tables
from curata.atomic import atomic_write_text
from curata.collection import Collection
from curata.curation import Curation, EditJob, EditResult, changes_from
from curata.storage import is_remote
from curata.tasks.bundle import newest_card
from curata.workspace import Workspace

QUEUES = ("labels", "tags", "duplicates", "outliers", "uncertain")
DECISIONS = ("accept", "reject", "skip")
TABLE = "review.lance"
FIX = "move review.lance aside to start a new decisions table (the collection keeps its edits)"
QUALITY = Path("reports") / "quality-latest.json"
CACHE_FORMAT = 1  # bump when the raw proposals of a queue change meaning: every cache is rebuilt
MIN_TAG_SCORE = 0.5  # a tag proposal also needs this probability: tuned thresholds of rare tags can be ~0.1
MAX_PROPOSALS = 20_000  # open raw proposals kept per queue, highest scores first (see `_cut`)
_FIELD_OF = {"labels": "label", "tags": "tags", "duplicates": "duplicate_of", "outliers": "excluded",
             "uncertain": "label"}
SCHEMA = pa.schema([
    ("decision_id", pa.string()), ("proposal_id", pa.string()), ("queue", pa.string()),
    ("item", pa.string()), ("field", pa.string()), ("value", pa.string()),  # value: JSON
    ("decision", pa.string()),  # accept | reject | undo
    ("who", pa.string()), ("at", pa.timestamp("ms", tz="UTC")), ("seq", pa.int64()),
    ("batch", pa.string()),  # accept: the edit batch; undo of an accept: the undo's batch
    ("undoes", pa.string()),  # undo: the decision_id it takes back
])

# Skipped proposals of this process: (workspace, queue) -> {proposal id: order of the skip}.
_SKIPPED: dict[tuple[str, str], dict[str, int]] = {}


class ReviewError(ValueError):
    """An unknown queue or decision, or a proposal that is not open (decided already, or no longer true)."""


@dataclass
class Proposal:
    id: str  # stable: a short hash of queue, item, field and value
    queue: str
    item: str
    field: str  # label | tags | duplicate_of | excluded
    value: Any  # what accept sets: the label, the tag to add, the kept item's id, True
    score: float  # higher = review first
    source: str  # which run or bundle made it
    current: Any = None  # the item's current value of `field`
    detail: dict[str, Any] = field(default_factory=dict)
    version: int = 0  # the item's edit_version when the proposal was checked (accept expects it)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "queue": self.queue, "item": self.item, "field": self.field, "value": self.value,
                "score": self.score, "source": self.source, "current": self.current, "detail": self.detail,
                "version": self.version}


@dataclass
class Queue:
    name: str
    proposals: list[Proposal]  # open ones, highest score first (skipped ones of this process last)
    notes: list[str] = field(default_factory=list)
    source: str = ""  # "" when the queue has no source yet
    done: int = 0  # decisions of this queue standing (accepted or rejected, not undone)
    left: int = 0  # open proposals
    built: str = ""  # when the raw proposals were computed
    cached: bool = False  # whether they came from cache/review/

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        shown = self.proposals if limit is None else self.proposals[:limit]
        return {"name": self.name, "source": self.source, "notes": self.notes, "done": self.done,
                "left": self.left, "built": self.built, "cached": self.cached,
                "proposals": [p.to_dict() for p in shown]}


def proposal_id(queue: str, item: str, field_name: str, value: Any) -> str:
    text = json.dumps([queue, item, field_name, value], ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# Public API -----------------------------------------------------------------------------------------


def build_queue(workspace: Workspace, queue: str, *, refresh: bool = False) -> Queue:
    """The open proposals of `queue` (see the module doc): raw proposals from the cache unless their source
    changed or `refresh`, then filtered against the decisions and the items' current values. A queue whose
    source is missing is empty, with a note saying which command makes it."""
    _check_queue(queue)
    if not workspace.exists:
        return Queue(queue, [], [f"no collection in workspace {workspace.root}: run `curata ingest` first"])
    cache = _raw(workspace, queue, refresh)
    decisions = _decisions(workspace)
    proposals = _open(workspace, queue, cache, decisions)
    order = _SKIPPED.get(_session_key(workspace, queue), {})
    if order:  # skipped ones last, in the order they were skipped
        proposals.sort(key=lambda p: order.get(p.id, -1))
    done = sum(1 for d in decisions.standing if d["queue"] == queue)
    return Queue(queue, proposals, list(cache["notes"]), cache["source"], done, len(proposals), cache["built"],
                 cache.get("cached", False))


def decide(workspace: Workspace, proposal_id: str, decision: str, who: str, queue: str,
           edit: Callable[[EditJob], EditResult] | None = None) -> dict[str, Any]:
    """Accept (apply it as an edit, why `review:<queue>`, and record it with the edit batch), reject (record
    it: never offered again for that item and value) or skip (nothing recorded; last in the queue for this
    process) one open proposal. `edit`: how an accept is written (the service's group-commit writer; by
    default `Curation.apply_job`, written at once). Returns {decision, proposal, batch, done, left}."""
    _check_queue(queue)
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision '{decision}' ({', '.join(DECISIONS)})")
    # Only the decided proposal is checked (its item read by id), not the whole queue rebuilt.
    cache, decisions = _raw(workspace, queue, False), _decisions(workspace)
    proposal = _find_open(workspace, queue, cache, decisions, proposal_id)
    done = sum(1 for d in decisions.standing if d["queue"] == queue)
    left = _undecided(queue, cache, decisions)
    if proposal is None:
        raise ReviewError(f"no open proposal {proposal_id} in the {queue} queue: it was decided already or is "
                          "no longer true")
    skipped = _SKIPPED.setdefault(_session_key(workspace, queue), {})
    if decision == "skip":
        skipped[proposal_id] = max(skipped.values(), default=0) + 1
        return {"decision": "skip", "proposal": proposal.to_dict(), "batch": None, "done": done, "left": left}
    batch = None
    if decision == "accept":
        # `expected`: the version the proposal was checked against, so an edit made since is a conflict.
        job = EditJob([proposal.item], changes_from(_edit(proposal)), who, f"review:{queue}",
                      expected={proposal.item: proposal.version})
        batch = (edit or Curation(workspace).apply_job)(job).batch
    _record(workspace, proposal, decision, who, batch)
    skipped.pop(proposal_id, None)
    return {"decision": decision, "proposal": proposal.to_dict(), "batch": batch, "done": done + 1,
            "left": max(0, left - 1)}


def _find_open(workspace: Workspace, queue: str, cache: dict[str, Any], decisions: _Decisions, pid: str
               ) -> Proposal | None:
    """The open proposal `pid`, checked against its own item only (a duplicates proposal against its group)."""
    raw = cache["proposals"]
    if queue != "duplicates":  # the id is a function of the raw proposal
        if "_ids" not in cache:
            _index(cache)
        at = cache["_ids"].get(pid)
        raw = [] if at is None else [raw[at]]
    return next((p for p in _open(workspace, queue, {**cache, "proposals": raw}, decisions) if p.id == pid), None)


def _undecided(queue: str, cache: dict[str, Any], decisions: _Decisions) -> int:
    """Raw proposals not decided: the `left` a decision reports (cheap; a proposal whose item changed
    meanwhile still counts until the queue is read again)."""
    if "_keys" not in cache:
        _index(cache)
    return sum(1 for k in cache["_keys"] if k not in decisions.closed)


def undo_last(workspace: Workspace, who: str, queue: str) -> dict[str, Any] | None:
    """Take back the newest standing decision of `queue` by `who`: an accept's edit is undone
    (`Curation.undo` of its batch), a rejection forgotten; an `undo` row records it. None when there is none."""
    _check_queue(queue)
    decisions = _decisions(workspace)
    mine = [d for d in decisions.standing if d["queue"] == queue and d["who"] == who]
    if not mine:
        return None
    last = max(mine, key=lambda d: d["seq"])
    batch = None
    if last["decision"] == "accept" and last["batch"]:
        # The edit first: if it cannot be undone, the decision stands (and nothing claims otherwise).
        batch = Curation(workspace).undo(who, batch=last["batch"], why=f"review:{queue} undo").batch
    value = json.loads(last["value"])
    _append(workspace, {**_row(last["proposal_id"], queue, last["item"], last["field"], value, "undo", who, batch),
                        "undoes": last["decision_id"]})
    after = build_queue(workspace, queue)
    return {"decision": "undo", "undone": {**last, "value": value, "at": _iso(last["at"])}, "batch": batch,
            "done": after.done, "left": after.left}


def queue_counts(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """{queue: {done, left, source, notes}} for a dashboard (builds a queue whose cache is missing or stale)."""
    out = {}
    for name in QUEUES:
        q = build_queue(workspace, name)
        out[name] = {"done": q.done, "left": q.left, "source": q.source, "notes": q.notes}
    return out


# Decisions ------------------------------------------------------------------------------------------


@dataclass
class _Decisions:
    standing: list[dict[str, Any]]  # accept / reject rows not undone
    closed: set[tuple[str, str, str]]  # (item, field, value JSON) of the standing ones: never offered again


_READ: dict[Path, tuple[tuple[int, int], _Decisions]] = {}  # the table read at (folder inode, version)


def _decisions(workspace: Workspace) -> _Decisions:
    path = workspace.root / TABLE
    if not tables.exists(path):
        return _Decisions([], set())
    dataset = tables.open_table(path, FIX)
    stamp = (path.stat().st_ino, int(dataset.version))  # the inode: a table moved aside and begun anew
    memo = _READ.get(path)
    if memo is not None and memo[0] == stamp:  # nothing decided since: no need to read it again
        return memo[1]
    rows = tables.read(dataset, path, FIX).to_pylist()
    undone = {r["undoes"] for r in rows if r["decision"] == "undo"}
    standing = [r for r in rows if r["decision"] in ("accept", "reject") and r["decision_id"] not in undone]
    decisions = _Decisions(standing, {(r["item"], r["field"], r["value"]) for r in standing})
    _READ[path] = (stamp, decisions)
    return decisions


def _row(pid: str, queue: str, item: str, field_name: str, value: Any, decision: str, who: str,
         batch: str | None) -> dict[str, Any]:
    return {"decision_id": f"d-{uuid.uuid4().hex[:12]}", "proposal_id": pid, "queue": queue, "item": item,
            "field": field_name, "value": _json(value), "decision": decision, "who": who,
            "at": pd.Timestamp.now(tz="UTC"), "seq": time.time_ns(), "batch": batch, "undoes": None}


def _record(workspace: Workspace, proposal: Proposal, decision: str, who: str, batch: str | None) -> None:
    _append(workspace, _row(proposal.id, proposal.queue, proposal.item, proposal.field, proposal.value, decision,
                            who, batch))


def _append(workspace: Workspace, row: dict[str, Any]) -> None:
    path = workspace.root / TABLE
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    with workspace.lock("review"):  # one writer creates the table; appends are one commit each
        dataset = tables.write(table, path, mode="append" if tables.exists(path) else "create")
        if tables.needs_compaction(dataset):  # a fragment per decision: merged now and then, rows never dropped
            tables.compact(dataset)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# Filtering per call -----------------------------------------------------------------------------------


def _open(workspace: Workspace, queue: str, cache: dict[str, Any], decisions: _Decisions) -> list[Proposal]:
    """The cached raw proposals still open: item present and active, the claim still true, not decided."""
    raw = cache["proposals"]
    if not raw:
        return []
    groups = cache.get("groups", [])
    wanted = {r["item"] for r in raw} | ({r["value"] for r in raw} if queue == "duplicates" else set())
    rows = _rows(workspace, list(wanted))
    if queue == "duplicates":  # a kept item excluded or marked since: its group's first active member instead
        lost = {r["detail"]["group"] for r in raw if not _active(rows.get(r["value"]))}
        extra = {i for g in lost for i in groups[g]} - set(rows)
        rows.update(_rows(workspace, list(extra)))
    out = []
    for r in raw:
        row = rows.get(r["item"])
        if not _active(row):
            continue
        value = r["value"]
        if queue == "duplicates" and not _active(rows.get(value)):
            value = next((i for i in groups[r["detail"]["group"]] if _active(rows.get(i))), None)
            if value is None or value == r["item"]:
                continue  # the item is its group's kept one now
        if not _still_true(queue, r, value, row):
            continue
        if (r["item"], r["field"], _json(value)) in decisions.closed:
            continue
        detail = {**r["detail"], "kept": value} if queue == "duplicates" else dict(r["detail"])
        out.append(Proposal(proposal_id(queue, r["item"], r["field"], value), queue, r["item"], r["field"], value,
                            float(r["score"]), cache["source"], row[r["field"]], detail, row["edit_version"]))
    out.sort(key=lambda p: (-p.score, p.item, _json(p.value)))
    return out


def _rows(workspace: Workspace, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The items' current values, edits still in the journal included (none is applied for this read)."""
    return Curation(workspace).current(ids) if ids else {}


def _active(row: dict[str, Any] | None) -> bool:
    return row is not None and not row["excluded"] and row["duplicate_of"] is None


def _still_true(queue: str, raw: dict[str, Any], value: Any, row: dict[str, Any]) -> bool:
    """Whether the claim the proposal makes still holds for the item as it is now."""
    if queue == "labels":  # the run judged one label: once it changed (to the proposal or another), done
        return row["label"] == raw["detail"]["label"] and row["label"] != value
    if queue == "uncertain":  # a curator labelled it already, or it has the model's label
        return "label" not in row["curated"] and row["label"] != value
    if queue == "tags":
        return value not in row["tags"]
    if queue == "outliers":  # judged against its class: a corrected label makes the judgement stale
        judged = raw["detail"].get("label")
        return judged is None or row["label"] == judged
    return True  # duplicates: being active is all


def _edit(proposal: Proposal) -> dict[str, Any]:
    if proposal.field == "tags":
        return {"add_tags": [proposal.value]}
    return {proposal.field: proposal.value}


def _check_queue(queue: str) -> None:
    if queue not in QUEUES:
        raise ReviewError(f"unknown review queue '{queue}' ({', '.join(QUEUES)})")


def _session_key(workspace: Workspace, queue: str) -> tuple[str, str]:
    return (str(workspace.root.resolve()), queue)


# Raw proposals and their cache ------------------------------------------------------------------------


def _raw(workspace: Workspace, queue: str, refresh: bool) -> dict[str, Any]:
    """{key, source, notes, built, proposals[, groups]}: from the cache when its key is current."""
    key, source, notes = _locate(workspace, queue)
    if key is None:  # no source: nothing to compute, nothing to cache
        return {"key": None, "source": source, "notes": notes, "built": "", "proposals": []}
    path = workspace.dir("cache") / "review" / f"{queue}.json"
    if not refresh and (cached := _read_cache(path, key)) is not None:
        return cached
    with workspace.lock(f"review-{queue}"):  # two callers building at once: the second reads the first's
        if not refresh and (cached := _read_cache(path, key)) is not None:
            return cached
        started = time.perf_counter()
        proposals, extra_notes, extra = _compute(workspace, queue, key, source, _decisions(workspace).closed)
        cache = {"key": key, "source": source, "notes": notes + extra_notes,
                 "built": datetime.now(UTC).isoformat(timespec="seconds"),
                 "seconds": round(time.perf_counter() - started, 3), "proposals": proposals, **extra}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, ensure_ascii=False))
        _index(cache)
    return cache


# Parsed caches of this process, by file: (mtime_ns, size) -> the cache with its proposals' ids and decision
# keys precomputed (a decision looks one proposal up; parsing and hashing 20,000 each time cost 40 ms).
_PARSED: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        memo = _PARSED.get(path)
        if memo is not None and memo[0] == stamp:
            cache = memo[1]
        else:
            cache = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cache, dict):
                _index(cache)
                _PARSED[path] = (stamp, cache)
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("key") != key:
        return None
    return {**cache, "cached": True}


def _index(cache: dict[str, Any]) -> None:
    """Each raw proposal's id (with its raw value) and decision key, computed once per parsed cache."""
    queue = cache["key"]["queue"] if isinstance(cache.get("key"), dict) else ""
    raw = cache.get("proposals", [])
    cache["_ids"] = {proposal_id(queue, r["item"], r["field"], r["value"]): i for i, r in enumerate(raw)}
    cache["_keys"] = [(r["item"], r["field"], _json(r["value"])) for r in raw]


def _locate(workspace: Workspace, queue: str) -> tuple[dict[str, Any] | None, str, list[str]]:
    """The cache key of the queue's source (None when it has none), its description, notes."""
    base: dict[str, Any] = {"format": CACHE_FORMAT, "queue": queue}
    if queue in ("labels", "outliers"):
        path = workspace.root / QUALITY
        if not path.is_file():
            return None, "", ["no quality run yet: run `curata quality`"]
        return {**base, **_file_key(workspace, path)}, f"quality run of {_mtime(path)}", []
    if queue == "duplicates":
        found = sorted((workspace.root / "clusters").glob("duplicates-*.json"), key=lambda p: p.stat().st_mtime_ns)
        if not found:
            return None, "", ["no near-duplicate groups yet: run `curata quality` or `curata duplicates`"]
        path = found[-1]
        return ({**base, **_file_key(workspace, path), "collection": _content_version(workspace)},
                f"near-duplicates {path.stem.removeprefix('duplicates-')} of {_mtime(path)}", [])
    if queue == "tags":
        bundle = newest_card(workspace.root / "models", lambda card: card.get("task") == "tags")
        if bundle is None:
            return None, "", ["no tags bundle yet: run `curata train tags`"]
    else:  # uncertain
        bundle = newest_card(workspace.root / "models",
                             lambda card: card.get("target") == "label" and card.get("task") != "tags")
        if bundle is None:
            return None, "", ["no bundle predicting label yet: run `curata train <task> --target label`"]
    folder, card, digest = bundle
    name = folder.name
    return ({**base, "bundle": name, "card": digest, "collection": _content_version(workspace)},
            f"{card.get('task')} bundle {name} ({card.get('model')}, created {card.get('created')})", [])


def _file_key(workspace: Workspace, path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"file": str(path.relative_to(workspace.root)), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _content_version(workspace: Workspace) -> int:
    """The collection version of its newest commit that was not a curation edit (history.jsonl read from the
    end): ingests, replaces and rollbacks change what the predictions cover, edits only what is filtered."""
    try:
        if is_remote(workspace.root):  # one object per commit (`Collection.logged_lines`)
            lines: Iterator[Any] = Collection(workspace.root).logged_lines(newest_first=True)
            for line in lines:
                if (version := _content_entry(line)) is not None:
                    return version
        else:
            with open(workspace.root / "history.jsonl", "rb") as fh:
                for line in _lines_backwards(fh):
                    if (version := _content_entry(line)) is not None:
                        return version
    except OSError:
        pass
    return workspace.collection.version  # no history: every commit counts


def _content_entry(line: str | bytes) -> int | None:
    """The version a history line names when its commit was not a curation edit (None: an edit, or torn)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None  # a torn line after a crash
    if isinstance(entry, dict) and entry.get("action") != "edit" and "version" in entry:
        return int(entry["version"])
    return None


def _lines_backwards(fh: Any, block: int = 65536) -> Iterator[bytes]:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    rest = b""
    while end > 0:
        start = max(0, end - block)
        fh.seek(start)
        chunk = fh.read(end - start) + rest
        lines = chunk.split(b"\n")
        rest = lines[0]  # may continue in the block before
        for line in reversed(lines[1:]):
            if line.strip():
                yield line
        end = start
    if rest.strip():
        yield rest


def _compute(workspace: Workspace, queue: str, key: dict[str, Any], source: str,
             closed: set[tuple[str, str, str]]) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """(raw proposals, notes, extra cache fields). Raw: {item, field, value, score, detail}, highest score
    first, at most MAX_PROPOSALS of them, decided ones left out before the cut."""
    if queue in ("labels", "outliers"):
        return _from_quality(workspace, queue, key, closed)
    if queue == "duplicates":
        return _from_duplicates(workspace, key, closed)
    return _from_bundle(workspace, queue, key, closed)


def _cut(queue: str, candidates: list[dict[str, Any]], closed: set[tuple[str, str, str]], notes: list[str]
         ) -> list[dict[str, Any]]:
    """Candidates by score; past MAX_PROPOSALS open ones, the rest is cut. Decided ones do not count against
    the cut but are kept: undoing a decision offers its proposal again without a rebuild."""
    candidates.sort(key=lambda r: (-r["score"], r["item"], _json(r["value"])))
    out, kept_open = [], 0
    for r in candidates:
        if (r["item"], r["field"], _json(r["value"])) in closed:
            out.append(r)
        elif kept_open < MAX_PROPOSALS:
            out.append(r)
            kept_open += 1
    if kept_open < len(candidates) - (len(out) - kept_open):
        notes.append(f"{len(candidates) - (len(out) - kept_open)} open proposals: the {MAX_PROPOSALS} with the "
                     "highest scores are queued; rebuild the queue (refresh) once they are reviewed for the next")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _from_quality(workspace: Workspace, queue: str, key: dict[str, Any], closed: set[tuple[str, str, str]]
                  ) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    summary = _read_json(workspace.root / key["file"])
    if not isinstance(summary, dict) or "labels" not in summary:
        return [], [f"{key['file']} is not a readable quality run: run `curata quality` again"], {}
    target = summary.get("target", "label")
    notes: list[str] = []
    candidates = []
    if queue == "labels":
        if target != "label":
            return [], [f"the newest quality run checked '{target}', not the label: run `curata quality` "
                        "(target label) for label proposals"], {}
        for r in summary["labels"].get("suspicious", []):
            candidates.append({"item": r["id"], "field": "label", "value": r["suggested"],
                               "score": round(1.0 - float(r["label_probability"]), 4),
                               "detail": {"label": r["label"], "label_probability": r["label_probability"],
                                          "suggested_probability": r["suggested_probability"],
                                          "margin": r["margin"]}})
    else:
        for o in summary.get("outliers", []):
            # Judged against its label only when the run's classes were the labels.
            detail = {"class": o["label"], "z": o["z"], "distance": o["distance"], "target": target}
            if target == "label":
                detail["label"] = o["label"]
            candidates.append({"item": o["id"], "field": "excluded", "value": True, "score": float(o["z"]),
                               "detail": detail})
    return _cut(queue, candidates, closed, notes), notes, {}


def _from_duplicates(workspace: Workspace, key: dict[str, Any], closed: set[tuple[str, str, str]]
                     ) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    found = _read_json(workspace.root / key["file"])
    if not isinstance(found, dict) or "members" not in found:
        return [], [f"{key['file']} is not a readable near-duplicates file: run `curata duplicates` again"], {}
    members = [g for g in found["members"] if len(g.get("ids", [])) >= 2]
    ids = sorted({i for g in members for i in g["ids"]})
    sizes = workspace.collection.by_ids(ids, ["id", "width", "height"]) if ids else None
    area = ({} if sizes is None else
            {i: int(w or 0) * int(h or 0) for i, w, h in zip(sizes["id"], sizes["width"], sizes["height"],
                                                              strict=True)})
    method, threshold = found.get("method"), found.get("threshold")
    groups: list[list[str]] = []
    candidates = []
    for g in members:
        # Kept: the largest image, then the smallest id; items gone from the collection left out.
        ranked = sorted((i for i in g["ids"] if i in area), key=lambda i: (-area[i], i))
        if len(ranked) < 2:
            continue
        spread = float(g.get("spread", 0.0))
        # phash spread: the largest distance in bits (0 = exact copies); embedding: the lowest similarity.
        score = 1.0 - spread / 64.0 if method == "phash" else spread
        detail = {"group": len(groups), "size": len(ranked), "kept": ranked[0], "spread": spread,
                  "method": method, "threshold": threshold}
        groups.append(ranked)
        candidates += [{"item": i, "field": "duplicate_of", "value": ranked[0], "score": round(score, 4),
                        "detail": detail} for i in ranked[1:]]
    notes: list[str] = []
    return _cut("duplicates", candidates, closed, notes), notes, {"groups": groups}


def _from_bundle(workspace: Workspace, queue: str, key: dict[str, Any], closed: set[tuple[str, str, str]]
                 ) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Predictions of the bundle over every active item, from cached features, a budget-sized chunk at a
    time: tags it predicts that an item lacks, or the items it is least sure of."""
    from curata.features.engine import make_extractor
    from curata.tasks.bundle import BundleError, check_features, load_bundle
    from curata.tasks.data import TaskDataError, feature_chunks

    directory = workspace.root / "models" / key["bundle"]
    try:
        task, card = load_bundle(directory)
        check_features(card)
        columns = ["id", "image_sha256", "label", "tags", "curated"]
        if any(make_extractor(name).modality == "text" for name in card.features):
            columns.append("text")
        items = workspace.items(columns)
        candidates: list[dict[str, Any]] = []
        lacking = 0
        for start, blocks, keep in feature_chunks(workspace, list(card.features), items):
            lacking += int((~keep).sum())
            if not keep.any():
                continue
            part = items.iloc[start:start + len(keep)][keep]
            proba = np.asarray(task.predict_proba(blocks), np.float64)
            if queue == "tags":
                candidates += _tag_candidates(task, card.labels, part, proba)
            else:
                candidates += _uncertain_candidates(task, card.labels, part, proba)
    except (BundleError, TaskDataError, ValueError, OSError) as e:
        return [], [f"bundle {key['bundle']} could not predict: {e}"], {}
    notes = ([f"{lacking} item(s) without the bundle's features were left out: `curata features`, then rebuild "
              "the queue (refresh)"] if lacking else [])
    return _cut(queue, candidates, closed, notes), notes, {}


def _tag_candidates(task: Any, labels: list[str], part: pd.DataFrame, proba: np.ndarray) -> list[dict[str, Any]]:
    thresholds = np.asarray(task.estimator_.thresholds_, np.float64)
    cut = np.maximum(thresholds, MIN_TAG_SCORE)
    rows, cols = np.nonzero(proba >= cut)
    ids, tags, curated = part["id"].to_numpy(), part["tags"].to_numpy(), part["curated"].to_numpy()
    out = []
    for r, j in zip(rows, cols, strict=True):
        tag = labels[j]
        # A tag the item has is no proposal, unless a curator set its tags: an undo or a removal may take
        # it away again without a rebuild (the per-call filter hides it while the item has it).
        if tags[r] is not None and tag in set(tags[r]) and not _has(curated[r], "tags"):
            continue
        out.append({"item": str(ids[r]), "field": "tags", "value": tag, "score": round(float(proba[r, j]), 4),
                    "detail": {"threshold": round(float(thresholds[j]), 4)}})
    return out


def _uncertain_candidates(task: Any, labels: list[str], part: pd.DataFrame, proba: np.ndarray
                          ) -> list[dict[str, Any]]:
    classes = [str(c) for c in (task.classes_ if getattr(task, "classes_", None) is not None else labels)]
    order = np.argsort(-proba, axis=1)[:, :3]
    top = np.take_along_axis(proba, order, axis=1)
    margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    out = []
    for r, (item, label, curated) in enumerate(zip(part["id"], part["label"], part["curated"], strict=True)):
        best = classes[order[r, 0]]
        if best == label and not _has(curated, "label"):  # as for tags: a curated label may be undone
            continue
        out.append({"item": str(item), "field": "label", "value": best, "score": round(1.0 - float(margin[r]), 4),
                    "detail": {"margin": round(float(margin[r]), 4),
                               "top": {classes[c]: round(float(p), 4) for c, p in zip(order[r], top[r],
                                                                                     strict=True)}}})
    return out


def _has(values: Any, name: str) -> bool:
    return values is not None and name in list(values)
