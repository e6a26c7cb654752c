"""The ingest report: every rejected or skipped record with its precise reason, and the accepted ones.

A source of millions of records must not hold millions of entries (the Ray driver's memory stays flat): the
accepted records are listed up to LISTED_OK and counted beyond it, with their notes counted too. Rejected and
skipped records are always listed: they are what the user has to act on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LISTED_OK = 10_000  # accepted records listed one by one; the rest are counted (`unlisted_ok`, `note_counts`)


@dataclass
class Entry:
    ref: str
    id: str
    status: str  # "ok" | "error" | "skipped" (not an item: hidden file, dangling link)
    code: str = "ok"  # machine code of the reason, e.g. "truncated", "duplicate_id"
    reason: str = ""
    notes: list[str] = field(default_factory=list)  # accepted with conversions (CMYK, alpha, ...)


@dataclass
class IngestReport:
    source: str
    format: str
    entries: list[Entry] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_edits: int = 0  # updated items whose curated values stayed over the source's new ones
    seconds: float = 0.0
    collections: dict[str, int] = field(default_factory=dict)  # accepted items per collection
    engine: str = "local"  # where images were verified: "local" threads or "ray" tasks
    nodes: int = 0  # with engine "ray": the Ray nodes whose tasks verified images
    unlisted_ok: int = 0  # accepted records past LISTED_OK, counted, not listed
    note_counts: Counter[str] = field(default_factory=Counter)  # each note over every accepted record
    ok_with_notes: int = 0  # accepted records with at least one note, listed or not
    commits: int = 0  # collection commits: one per part of the source (`curata.ingest.pipeline.INGEST_WINDOW`)
    listed_ok: int = field(default=0, repr=False)  # accepted records in `entries`

    def add(self, entry: Entry) -> None:
        """Record one record's outcome (an accepted one past LISTED_OK is only counted)."""
        if entry.status == "ok":
            self.note_counts.update(entry.notes)
            self.ok_with_notes += bool(entry.notes)
            if self.listed_ok >= LISTED_OK:
                self.unlisted_ok += 1
                return
            self.listed_ok += 1
        self.entries.append(entry)

    @property
    def ok(self) -> list[Entry]:
        """The accepted records listed (all of them up to LISTED_OK; `ok_count` counts every one)."""
        return [e for e in self.entries if e.status == "ok"]

    @property
    def ok_count(self) -> int:
        return self.listed_ok + self.unlisted_ok

    @property
    def errors(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "error"]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "skipped"]

    def summary(self) -> dict[str, Any]:
        records = len(self.entries) + self.unlisted_ok
        return {
            "source": self.source,
            "format": self.format,
            "records": records,
            "ok": self.ok_count,
            "errors": len(self.errors),
            "with_notes": self.ok_with_notes,
            "error_codes": dict(Counter(e.code for e in self.errors)),
            "skipped": len(self.skipped),
            "skipped_codes": dict(Counter(e.code for e in self.skipped)),
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "kept_edits": self.kept_edits,
            "collections": dict(self.collections),
            "engine": self.engine,
            **({"nodes": self.nodes} if self.engine == "ray" else {}),
            **({"unlisted_ok": self.unlisted_ok} if self.unlisted_ok else {}),
            "commits": self.commits,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(records / self.seconds, 1) if self.seconds else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "entries": [vars(e) for e in self.entries]}
