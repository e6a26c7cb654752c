"""Progress reporting that library code can call without knowing about terminals.

Library functions take a `Reporter`; the CLI passes a Rich-backed one, tests and the service pass
nothing (the silent default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> Advance:
        """Start a task; returns a function to call with the number of units just completed."""
        ...


class SilentReporter:
    def task(self, description: str, total: int | None) -> Advance:
        return lambda n=1: None


class RichReporter:
    def __init__(self, progress) -> None:  # a started rich.progress.Progress
        self._progress = progress

    def task(self, description: str, total: int | None) -> Advance:
        task_id = self._progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self._progress.advance(task_id, n)

        return advance


@contextmanager
def rich_reporter(enabled: bool = True) -> Iterator[Reporter]:
    """A Rich progress display on stderr for the duration of the block (silent when disabled)."""
    if not enabled:
        yield SilentReporter()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield RichReporter(progress)


SILENT = SilentReporter()

# The reporter of the command being run, for work deep inside an estimator that scikit-learn's API gives no
# reporter argument (fine-tuning inside cross-validation): set by `reporting`, read by `active_reporter`.
_ACTIVE: ContextVar[Reporter] = ContextVar("curata_reporter", default=SILENT)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Make `reporter` the one `active_reporter` returns for the duration of the block."""
    token = _ACTIVE.set(reporter)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_reporter() -> Reporter:
    """The reporter of the enclosing `reporting` block (silent outside any)."""
    return _ACTIVE.get()
