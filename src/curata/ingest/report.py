"""The ingest report: one entry per record read, `ok` or the precise reason it was rejected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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

    @property
    def ok(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "ok"]

    @property
    def errors(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "error"]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "skipped"]

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "records": len(self.entries),
            "ok": len(self.ok),
            "errors": len(self.errors),
            "with_notes": sum(1 for e in self.ok if e.notes),
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
            "seconds": round(self.seconds, 3),
            "items_per_second": round(len(self.entries) / self.seconds, 1) if self.seconds else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "entries": [vars(e) for e in self.entries]}
