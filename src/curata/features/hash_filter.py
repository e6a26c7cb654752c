"""Which content hashes a feature store holds a vector for, answered without its index: planning stays flat.

    features/<extractor dir>/hashes/
      run-<time>-<random>.npy   sorted 64-bit keys of the hashes of one write (or of a merge of several)
      complete                  present once the runs cover every row of the table

Planning asks whether each new item's hash is stored. Answered through the table's BTREE, that means loading
the index pages, and 1,000 random hashes touch nearly every page. So the cost grows with the store: 0.2 s at
1M rows in a fresh process, against 16 ms at 10k. The runs answer from sorted arrays (memory-mapped, binary
search): a hash absent here is certainly not stored, and only the hashes found here are checked in the table.

Writers add the hashes of their successful rows before they commit them. So the runs are a superset of the
table: a killed write leaves extra keys, and an extra key only costs one index probe. A store curata creates
has complete runs from its first row. One written before the runs existed, or whose runs are damaged, gets
them from one scan of its hash column the first time a plan asks (`FeatureStore.missing`); until then the
table's index answers as before.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from curata.storage import is_remote, local_copy, try_lock

FOLDER = "hashes"
COMPLETE = "complete"
MAX_RUNS = 16  # past this many runs, they are merged into one (a plan reads every run)


def keys(hashes: Iterable[str]) -> np.ndarray:
    """64-bit keys of the hashes (blake2b: any text keys alike; collisions only cost an index probe)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(h.encode(), digest_size=8).digest(), "little")
                        for h in hashes), dtype=np.uint64)


class HashFilter:
    def __init__(self, store_folder: Path):
        self.folder = store_folder / FOLDER

    def add(self, hashes: list[str]) -> None:
        """Record these hashes (before the rows that hold them are committed)."""
        if hashes:
            self._write_run(np.unique(keys(hashes)))
            if len(self._runs()) > MAX_RUNS:
                self._merge()

    def build(self, hashes: Iterable[str]) -> None:
        """Record every hash of the table (from one scan of it), drop the runs that do not read, and mark the
        runs complete. The others stay: one a writer added after the scan may hold hashes the scan missed."""
        self._write_run(np.unique(keys(hashes)))
        for run in self._runs():
            try:
                _load(run)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, EOFError):  # EOFError: a run a power cut left empty
                run.unlink(missing_ok=True)
        (self.folder / COMPLETE).touch()

    def complete(self) -> bool:
        return (self.folder / COMPLETE).exists()

    def mark_complete(self) -> None:
        """The runs cover the table: said by the writer that created it (every row since went through `add`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / COMPLETE).touch()

    def readable(self) -> bool:
        """Whether the runs are complete and every one of them reads (else `build` them again)."""
        return self.contains([]) is not None

    def contains(self, hashes: list[str]) -> np.ndarray | None:
        """For each hash, whether the runs hold its key: False means certainly not stored. None when the runs
        are not complete or cannot be read (ask the table)."""
        if not self.complete():
            return None
        wanted = keys(hashes)
        found = np.zeros(len(wanted), bool)
        for _ in range(3):  # a merge may delete a run between listing and reading it: list again
            try:
                for run in self._runs():
                    stored = _load(run)
                    if len(stored):
                        at = np.minimum(np.searchsorted(stored, wanted), len(stored) - 1)
                        found |= np.asarray(stored[at]) == wanted
                return found
            except FileNotFoundError:
                found[:] = False
            except (OSError, ValueError, EOFError):  # a damaged run: the table's index answers instead
                return None
        return None

    def _runs(self) -> list[Path]:
        return sorted(self.folder.glob("run-*.npy"))

    def _write_run(self, values: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"run-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npy"
        if is_remote(final):  # one PUT: atomic by itself
            buffer = io.BytesIO()
            np.save(buffer, values.astype(np.uint64), allow_pickle=False)
            final.write_bytes(buffer.getvalue())
            return final
        staged = self.folder / f".{final.name}.tmp"
        with open(staged, "wb") as fh:
            np.save(fh, values.astype(np.uint64), allow_pickle=False)
        staged.replace(final)  # readers never see half a run
        return final

    def _merge(self) -> None:
        """Merge the small runs into one, and the largest too once they add up to its size (so a key is
        rewritten a few times over the store's life, not at every merge). The new run is in place before the
        old ones go: a reader between the two sees duplicates, never a gap."""
        with try_lock(self.folder / ".merge.lock") as held:
            if not held:
                return  # another writer is merging
            try:
                sizes = {run: run.stat().st_size for run in self._runs()}
                runs = sorted(sizes, key=sizes.__getitem__)
                if len(runs) <= MAX_RUNS:
                    return
                if sum(sizes[run] for run in runs[:-1]) < sizes[runs[-1]]:
                    runs = runs[:-1]
                merged = np.unique(np.concatenate([_load(run) for run in runs]))
            except (OSError, ValueError, EOFError):  # a run dropped meanwhile, or damaged (a plan rebuilds them)
                return
            self._write_run(merged)
            for run in runs:
                run.unlink(missing_ok=True)


def _load(run: Path) -> np.ndarray:
    """A run's keys, memory-mapped (a run on object storage is copied to the local cache once: runs never change
    under their name)."""
    return np.load(local_copy(run) if is_remote(run) else run, mmap_mode="r")
