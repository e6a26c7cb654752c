"""The edit journal: edits that are acknowledged but not yet written into the workspace's tables.

    edits-journal.jsonl    one line per write (a group of edit batches): its log rows and the items' new values
    edits-applying.jsonl   the journal while it is applied to edits.lance and collection.lance; it is renamed
                           from the journal so that writes can go on meanwhile, and deleted once both commits
                           have landed

A write is durable once its line has been fsynced. This costs about a millisecond, against tens of
milliseconds for the two table commits, so the service acknowledges an edit first and writes the tables
later, for many edits at once (`curata.curation`). A line torn by a kill was never acknowledged. Readers skip
it, and the next append cuts it off first, so the next line is not glued onto it. Callers hold the workspace
lock.

On object storage, which cannot append or rename, the journal is a prefix with one object per write
(`edits-journal/<time>-<random>.json`, durable once its PUT returns) and `edits-applying.json` lists the objects
being applied (`ObjectJournal`, same interface).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from curata.atomic import sync_dir
from curata.storage import StorePath, is_remote

JOURNAL = "edits-journal.jsonl"
APPLYING = "edits-applying.jsonl"
_CHUNK = 1 << 16


def EditJournal(root: Any) -> LocalJournal | ObjectJournal:
    """The workspace's journal: a file on local disk, a prefix of objects on object storage."""
    return ObjectJournal(root) if is_remote(root) else LocalJournal(root)


class LocalJournal:
    def __init__(self, root: Path):
        self.path = root / JOURNAL
        self.applying = root / APPLYING

    def pending(self) -> bool:
        """Whether any edit waits to be applied: one or two `stat` calls, so that readers can ask every time."""
        try:
            if self.path.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return self.applying.exists()

    def append(self, entry: dict[str, Any]) -> None:
        """Add one write and make it durable (fsync) before returning."""
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        created = not self.path.exists()
        with open(self.path, "ab+") as fh:
            _cut_torn_tail(fh)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            sync_dir(self.path.parent)  # so that the new file's name survives a power cut too

    def entries(self) -> list[dict[str, Any]]:
        """Every complete write waiting, oldest first: the file being applied, then the journal."""
        return [entry for path in (self.applying, self.path) for entry in _read(path)]

    def applying_entries(self) -> list[dict[str, Any]]:
        return _read(self.applying)

    def waiting_entries(self) -> list[dict[str, Any]]:
        """The journal's writes, without the file being applied."""
        return _read(self.path)

    def rotate(self) -> bool:
        """Move the journal aside to be applied, unless a file is being applied already (it is finished
        first). Returns whether it moved."""
        if self.applying.exists():
            return False
        try:
            if self.path.stat().st_size == 0:
                return False
        except FileNotFoundError:
            return False
        os.replace(self.path, self.applying)
        sync_dir(self.path.parent)
        return True

    def applied(self) -> None:
        """The file being applied is now in the tables: forget it."""
        self.applying.unlink(missing_ok=True)
        sync_dir(self.path.parent)


class ObjectJournal:
    """The journal on object storage: one object per write; `applying` lists the objects moved aside."""

    def __init__(self, root: StorePath):
        self.folder = root / "edits-journal"
        self.applying = root / "edits-applying.json"

    def pending(self) -> bool:
        return self.applying.is_file() or self.folder.is_dir()

    def append(self, entry: dict[str, Any]) -> None:
        """One PUT: the write is durable, and whole, once it returns."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        (self.folder / name).write_bytes(json.dumps(entry, ensure_ascii=False).encode("utf-8"))

    def _moved(self) -> list[str]:
        try:
            return list(json.loads(self.applying.read_bytes()))
        except FileNotFoundError:
            return []

    def _objects(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        if names is None:
            names = sorted(path.name for path, _ in self.folder.walk_files())
        out = []
        for name in names:
            try:
                entry = json.loads((self.folder / name).read_bytes())
            except (FileNotFoundError, ValueError):  # applied and deleted meanwhile
                continue
            if isinstance(entry, dict) and entry.get("batches") and isinstance(entry.get("rows"), list):
                out.append(entry)
        return out

    def entries(self) -> list[dict[str, Any]]:
        return self.applying_entries() + self.waiting_entries()

    def applying_entries(self) -> list[dict[str, Any]]:
        return self._objects(self._moved())

    def waiting_entries(self) -> list[dict[str, Any]]:
        moved = set(self._moved())
        return self._objects(sorted(path.name for path, _ in self.folder.walk_files() if path.name not in moved))

    def rotate(self) -> bool:
        if self.applying.is_file():
            return False
        names = sorted(path.name for path, _ in self.folder.walk_files())
        if not names:
            return False
        self.applying.write_bytes(json.dumps(names).encode())
        return True

    def applied(self) -> None:
        """Delete the applied writes, then the list (a kill between leaves a list of absent objects: applied)."""
        for name in self._moved():
            (self.folder / name).unlink(missing_ok=True)
        self.applying.unlink(missing_ok=True)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:  # torn by a kill mid-append: never acknowledged
            continue
        if isinstance(entry, dict) and entry.get("batches") and isinstance(entry.get("rows"), list):
            out.append(entry)
    return out


def _cut_torn_tail(fh: Any) -> None:
    """Truncate the file after its last complete line (a kill mid-append leaves a partial one)."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    position = end
    while position > 0:
        start = max(0, position - _CHUNK)
        fh.seek(start)
        newline = fh.read(position - start).rfind(b"\n")
        if newline >= 0:
            fh.truncate(start + newline + 1)
            return
        position = start
    fh.truncate(0)
