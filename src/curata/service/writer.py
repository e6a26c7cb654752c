"""The service's edits: group commit, acknowledged once journaled, written into the tables a moment later.

Requests that arrive while an edit is being written wait for the next write and go in it together
(`Curation.apply_many`: one batch, one result and one conflict check each, one journal line for all). A write
is acknowledged once its journal line is on disk (`defer=True`): ~1 ms of fsync instead of two table commits.

A second thread writes the journal into the tables (`Curation.apply_journal`) when no edit has come for
APPLY_IDLE_S, or APPLY_AFTER_S after the oldest edit waiting, so each commit carries many edits. It holds the
workspace lock only to move the journal aside, so edits are journaled while it commits. A reader that opens
the collection meanwhile applies the journal itself first (`curation.settle`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

from curata.curation import Curation, EditJob, EditResult
from curata.workspace import Workspace

MAX_GROUP = 64  # edits written together at most (their rows are read and merged at once)
APPLY_IDLE_S = 0.2  # journaled edits go into the tables once no edit has come for this long...
APPLY_AFTER_S = 1.0  # ...or this long after the oldest one waiting, whichever comes first
IDLE_MERGE_ABOVE = 8  # fragments past which an apply merges the small ones (a command-line edit: past 32)
log = logging.getLogger("curata.service")


class EditWriter:
    """One writer thread and one applier thread per worker process; across processes the workspace lock
    orders the writes and the apply lock the commits."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._queue: queue.Queue[tuple[EditJob, Future[EditResult]]] = queue.Queue()
        self._started = False
        self._start = threading.Lock()
        self._journaled = threading.Condition()
        self._first: float | None = None  # when the oldest edit not yet applied was journaled
        self._last = 0.0  # when the newest was

    def apply(self, job: EditJob) -> EditResult:
        """Queue `job`, wait for the write that carries it, and return its result (or raise its error)."""
        with self._start:
            if not self._started:
                threading.Thread(target=self._write, name="curata-edits", daemon=True).start()
                threading.Thread(target=self._apply, name="curata-edits-apply", daemon=True).start()
                self._started = True
        done: Future[EditResult] = Future()
        self._queue.put((job, done))
        return done.result()

    def _write(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = Curation(self.workspace).apply_many([job for job, _ in group], defer=True)
            except BaseException as e:  # a full disk, a damaged table: every waiting request gets the error
                for _, done in group:
                    done.set_exception(e)
                continue
            if any(not isinstance(r, BaseException) and r.batch for r in results):
                with self._journaled:
                    self._last = time.monotonic()
                    self._first = self._first or self._last
                    self._journaled.notify()
            for (_, done), result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    def _due(self) -> float | None:
        """Seconds until the journal should be applied (None: nothing waits)."""
        if self._first is None:
            return None
        return min(self._last + APPLY_IDLE_S, self._first + APPLY_AFTER_S) - time.monotonic()

    def _apply(self) -> None:
        while True:
            with self._journaled:
                while (due := self._due()) is None or due > 0:
                    self._journaled.wait(due)
                self._first = None
            try:
                Curation(self.workspace).apply_journal(compact_above=IDLE_MERGE_ABOVE)
            except Exception:  # the journal keeps the edits: the next apply, or any reader, tries again
                log.warning("writing the journaled edits into the tables failed", exc_info=True)
