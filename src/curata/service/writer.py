"""Group commit for the service's edits: requests that arrive while an edit is being written wait for the
next write and go in it together (`Curation.apply_many`: one batch, one result and one conflict check each,
two commits for all), so many small concurrent edits cost a few commits instead of one pair each."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from curata.curation import Curation, EditJob, EditResult
from curata.workspace import Workspace

MAX_GROUP = 64  # edits written together at most (their rows are read and merged at once)
IDLE_MERGE_ABOVE = 8  # fragments past which an idle writer merges the small ones (a write itself past 32)
log = logging.getLogger("curata.service")


class EditWriter:
    """One writer thread per worker process; across processes the workspace lock orders the writes."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._queue: queue.Queue[tuple[EditJob, Future[EditResult]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def apply(self, job: EditJob) -> EditResult:
        """Queue `job`, wait for the write that carries it, and return its result (or raise its error)."""
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="curata-edits", daemon=True)
                self._thread.start()
        done: Future[EditResult] = Future()
        self._queue.put((job, done))
        return done.result()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = Curation(self.workspace).apply_many([job for job, _ in group])
            except BaseException as e:  # a full disk, a damaged table: every waiting request gets the error
                for _, done in group:
                    done.set_exception(e)
                continue
            for (_, done), result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)
            if self._queue.empty():  # merge small fragments while no edit waits, so writes rarely have to
                try:
                    Curation(self.workspace).merge_small_fragments(IDLE_MERGE_ABOVE)
                except Exception:  # upkeep: the next idle moment (or `curata compact`) tries again
                    log.warning("merging the small fragments of edits failed", exc_info=True)
