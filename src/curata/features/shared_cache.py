"""One feature cache for every workspace on a machine, keyed by content hash.

The same images (or texts) are often ingested into several workspaces — a collection and its curated
subset, a benchmark and a demo. Each workspace keeps its own feature store (it is what its commands read),
but `compute` first looks the items it lacks up here and copies the vectors it finds, and adds what it
computed, so an image is embedded once per machine, not once per workspace. Only extractors whose output
depends on nothing but the item are shared: a fitted extractor (tf-idf, visual words) depends on its
workspace's fit. Failed items are never shared (a later run retries them).

Where: `$CURATA_FEATURE_CACHE`, else `<cache dir>/features` (`curata.paths.cache_dir`); set it to `off`
to disable. Deleting the folder loses nothing a workspace needs.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from curata.features.base import Extractor
from curata.features.store import FeatureStore, store_dirname
from curata.paths import cache_dir

OFF = ("off", "0", "false", "no", "none")


def shared_dir() -> Path | None:
    """The shared cache's folder, or None when disabled."""
    env = os.environ.get("CURATA_FEATURE_CACHE")
    if env is not None and env.strip().lower() in OFF:
        return None
    return Path(env).expanduser() if env and env.strip() else cache_dir() / "features"


def shared_store(extractor: Extractor) -> FeatureStore | None:
    """The shared store of `extractor`, or None (cache off, or an extractor fitted per workspace)."""
    folder = shared_dir()
    if folder is None or extractor.needs_fit or not extractor.stored:
        return None
    return FeatureStore.for_extractor(folder, extractor)


@contextmanager
def _locked(store: FeatureStore) -> Iterator[None]:
    """Writers of one shared store take turns (processes of different workspaces may add at once)."""
    store.path.parent.mkdir(parents=True, exist_ok=True)
    with open(store.path.parent / f".lock-{store_dirname(store.key)}", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def take_shared(store: FeatureStore, keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The keys among `keys` whose vector the shared store holds (computed without error), and the vectors."""
    if not keys or store.count() == 0:
        return [], np.zeros((0, store.dim), np.float32)
    vectors, errors = store.lookup(keys)
    found = np.array([e is None for e in errors], bool)
    return [k for k, ok in zip(keys, found, strict=True) if ok], vectors[found]


def give_shared(store: FeatureStore, keys: list[str], vectors: np.ndarray, errors: list[str | None]) -> int:
    """Add the successfully computed `keys` the shared store lacks; returns how many were added."""
    ok = np.array([e is None for e in errors], bool)
    if not ok.any():
        return 0
    with _locked(store):
        keys_ok = [k for k, good in zip(keys, ok, strict=True) if good]
        new = store.missing(keys_ok) if store.count() else np.ones(len(keys_ok), bool)
        if not new.any():
            return 0
        store.append([k for k, n in zip(keys_ok, new, strict=True) if n], vectors[ok][new], [None] * int(new.sum()))
        store.finish()
    return int(new.sum())
