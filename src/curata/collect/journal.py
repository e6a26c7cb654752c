"""The collectors' checkpoint: an append-only JSON-lines journal in the workspace's cache folder.

Why a journal and not a rewritten state file: a collector records progress after every page or
item, and rewriting a growing state file each time costs O(n²) over a long run. Appending one
line per event costs O(1) and is just as safe: each event is written with a single ``write`` and
flushed, so a run killed at any moment leaves complete lines plus at most one torn last line,
which the next run cuts off before appending. Replaying the journal restores what was done;
nothing finished is fetched again.

The first line names the query the journal belongs to (its fingerprint); a journal of another
query is never mixed in, and ``refresh`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["Journal", "fingerprint_key"]


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a query description, used in the journal's file name."""
    text = json.dumps(fingerprint, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Journal:
    """``open()`` replays past events; ``append()`` adds one, durable against a killed process."""

    def __init__(self, path: Path, fingerprint: dict[str, Any]):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._file: Any = None

    def open(self, refresh: bool = False) -> list[dict[str, Any]]:
        """Open for appending and return the events already recorded (none after ``refresh``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        events = [] if refresh else self._replay()
        if events is None or refresh:
            self._start_over()
            events = []
        self._file = self.path.open("a", encoding="utf-8")
        return events

    def _replay(self) -> list[dict[str, Any]] | None:
        """Events of an existing journal of this query; None when there is none or it is foreign."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        end = raw.rfind(b"\n")
        if end + 1 != len(raw):  # a torn last line from a killed run: cut it so appends stay line-aligned
            with self.path.open("r+b") as f:
                f.truncate(end + 1)
            raw = raw[: end + 1]
        lines = raw.decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("fingerprint") != _normalised(self.fingerprint):
            return None
        events = []
        for line in lines[1:]:
            try:
                event = json.loads(line)
            except ValueError:  # cannot happen for lines we wrote whole; skip rather than fail the run
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def _start_over(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": _normalised(self.fingerprint)}) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, event: dict[str, Any]) -> None:
        """Record one event; thread-safe. One write + flush: a kill leaves it whole or torn, never interleaved."""
        line = json.dumps(event, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._file is None:
                raise RuntimeError("journal is not open")
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _normalised(value: dict[str, Any]) -> Any:
    """The fingerprint as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
