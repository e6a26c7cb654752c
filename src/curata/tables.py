"""What the workspace's Lance tables share: opening one with a clear error, appending a commit, compaction.

A Lance dataset is a folder of immutable data files (fragments) plus one manifest per version; a write
adds files and then commits a new manifest atomically, so a kill -9 at any point leaves the previous
version readable and at worst some unreferenced files, which `compact` cleans up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from curata.storage import rmtree

# Small fragments (one per `features` flush, one per ingest) are merged past this many.
COMPACT_ABOVE_FRAGMENTS = 32
TARGET_ROWS_PER_FRAGMENT = 262_144
SMALL_FRAGMENT_ROWS = 16_384  # `compact_small` merges fragments under this size only
MERGE_ALL = 1 << 20  # `num_indices_to_merge` for "every delta segment of an index"
DELTA_SHARE = 0.25  # an index's delta segments are merged once they hold this share of its main segment


class CorruptTable(ValueError):
    """A table (or one of its fragments) that cannot be read: one line naming it and the fix, exit code 2."""


_session: Any = None


def _lance() -> Any:
    import lance  # imported on first use: 0.4 s that commands not touching a table should not pay

    return lance


def session() -> Any:
    """One Lance session per process: the index and metadata caches outlive a dataset handle, so reopening
    a table (every lookup sees the newest version) does not reload its BTREE from disk."""
    global _session
    if _session is None:
        _session = _lance().Session()
    return _session


def exists(path: Path) -> bool:
    """Whether a table was committed at `path` (a folder without a manifest is a create that died first)."""
    try:
        return any(e.name.endswith(".manifest") for e in (path / "_versions").iterdir())  # a folder or a prefix
    except OSError:
        return False


def open_table(path: Path, fix: str, version: int | None = None) -> Any:
    """The dataset at `path` (its latest version, or `version`); a damaged one is a CorruptTable naming it."""
    try:
        return _lance().dataset(str(path), version=version, session=session())
    except (OSError, ValueError, RuntimeError) as e:  # lance raises these for missing or damaged manifests
        raise CorruptTable(f"{path} is not a readable table ({_reason(e)}); {fix}") from e


def read(dataset: Any, path: Path, fix: str, **scan: Any) -> pa.Table:
    """`dataset.scanner(**scan).to_table()` with damage reported as CorruptTable naming the table and the fix."""
    try:
        return dataset.scanner(**scan).to_table()
    except (OSError, ValueError, RuntimeError) as e:
        raise CorruptTable(f"{path} has a damaged fragment ({_reason(e)}); {fix}") from e


def batches(dataset: Any, path: Path, fix: str, **scan: Any) -> Iterator[pa.RecordBatch]:
    """`read`, one record batch at a time."""
    try:
        yield from dataset.scanner(**scan).to_batches()
    except (OSError, ValueError, RuntimeError) as e:
        raise CorruptTable(f"{path} has a damaged fragment ({_reason(e)}); {fix}") from e


def write(table: pa.Table, path: Path, *, mode: str, message: str = "") -> Any:
    """Create, append to or overwrite the table (one commit). Returns the new dataset."""
    kwargs: dict[str, Any] = {"commit_message": message} if message else {}
    if mode == "create" and path.exists() and not exists(path):
        rmtree(path)  # files of a create killed before its first commit
    return _lance().write_dataset(table, str(path), mode=mode, max_rows_per_file=TARGET_ROWS_PER_FRAGMENT,
                                  **kwargs)


def compact(dataset: Any, *, keep_versions: timedelta | None = None) -> dict[str, int]:
    """Merge small fragments (rows are copied, never dropped), bring scalar indexes up to date, and delete
    files no version references any more (`keep_versions`: also versions older than this)."""
    before = len(dataset.get_fragments())
    # Every delta segment merged into one first: fragments under different index segments are not merged.
    dataset.optimize.optimize_indices(num_indices_to_merge=MERGE_ALL)
    metrics = dataset.optimize.compact_files(target_rows_per_fragment=TARGET_ROWS_PER_FRAGMENT)
    dataset.optimize.optimize_indices(num_indices_to_merge=MERGE_ALL)
    if keep_versions is not None:
        dataset.cleanup_old_versions(older_than=keep_versions, error_if_tagged_old_versions=False)
    return {"fragments_before": before, "fragments_after": len(dataset.get_fragments()),
            "fragments_removed": int(getattr(metrics, "fragments_removed", 0)),
            "fragments_added": int(getattr(metrics, "fragments_added", 0))}


def compact_with(dataset: Any, rewrite: Callable[[list[Any], str], list[Any]]) -> None:
    """Merge fragments as `compact` does, with the rows rewritten by `rewrite(tasks, uri)` (workers each
    running `task.execute(lance.dataset(uri))`: Lance's distributed compaction) and only the commit here.
    Indexes are not merged: the next `index_new_rows` covers the merged fragments."""
    from lance.optimize import Compaction

    plan = Compaction.plan(dataset, {"target_rows_per_fragment": TARGET_ROWS_PER_FRAGMENT})
    if plan.tasks:
        Compaction.commit(dataset, rewrite(plan.tasks, dataset.uri))


def compact_small(dataset: Any) -> None:
    """Merge only the small fragments (under SMALL_FRAGMENT_ROWS: one per edit, say) and index the result as
    a delta, so the cost follows the rows merged, not the table: large fragments are left as they are until
    a full `compact`. Deletions are materialised only in the fragments merged."""
    dataset.optimize.compact_files(target_rows_per_fragment=SMALL_FRAGMENT_ROWS, materialize_deletions=False)
    dataset.optimize.optimize_indices(num_indices_to_merge=0)


def readable_fragments(dataset: Any) -> tuple[list[pa.Table], int]:
    """Every fragment that can still be read, and how many rows the others held (repairs rewrite from these)."""
    kept, dropped = [], 0
    for fragment in dataset.get_fragments():
        try:
            kept.append(fragment.to_table())
        except (OSError, ValueError, RuntimeError):
            dropped += fragment.count_rows()
    return kept, dropped


def index_new_rows(dataset: Any) -> None:
    """Cover the fragments added since the last index update with a small delta index (merging it into the
    main index would rewrite an index the size of the table on every commit). An index whose deltas together
    reach DELTA_SHARE of its largest segment is merged into one: every lookup probes each segment, so they must
    stay few, and merging only past a share of the table keeps the rewriting to a constant per row, amortised
    (as in an LSM tree). `compact` merges everything."""
    dataset.optimize.optimize_indices(num_indices_to_merge=0)
    for index in dataset.describe_indices():
        if len(index.segments) < 2:
            continue
        deltas = sorted(dataset.stats.index_stats(index.name).get("num_indexed_rows_per_delta") or [])
        if deltas and sum(deltas[:-1]) >= DELTA_SHARE * deltas[-1]:
            dataset.optimize.optimize_indices(num_indices_to_merge=MERGE_ALL, index_names=[index.name])


def needs_compaction(dataset: Any, above: int = COMPACT_ABOVE_FRAGMENTS) -> bool:
    return len(dataset.get_fragments()) > above


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
