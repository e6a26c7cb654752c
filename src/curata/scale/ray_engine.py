"""`compute_ray`: the feature engine's work spread over a Ray cluster with Ray Data.

The driver does what needs the whole collection, exactly as the local engine does (it calls the same
`plan_compute`): fit collection-dependent extractors once with `ensure_fitted`, and diff the items against
the feature store so only missing content hashes are computed, but WINDOW_ITEMS items at a time
(`ComputePlan.windows`), so what it holds to plan does not grow with the collection. Each window's missing (hash,
source) pairs become a Ray dataset; `map_batches` runs them through a pool of actors, each holding one copy
of the extractor (fitted state included: extractors pickle without their native sessions, by the `_lazy`
rule of `features/base.py`, and load their model once per actor on first use). Each actor loads and
transforms through the local engine's own `load_batch` and `transform_loaded`, so an unreadable image or a
failing item gets the same error string as locally and never fails its batch.

Each actor writes its batch's vectors (and per-item errors) straight into the workspace's feature store as
one uncommitted Lance fragment file (`features.store.write_fragments`; WRITE_ROWS items, several model
batches) and returns only its metadata; the driver commits them (`FeatureStore.commit_fragments`, Lance's
distributed write: one commit per `PART_SIZE` rows or so) and never receives a vector. `load_matrix`, every
later stage and the vector index read the rows like locally computed features; a killed run keeps every
committed part (fragments written but never committed are unreferenced files that `curata compact` deletes
once a week old), and failed rows stay uncached (retried next run). At the end, Ray tasks merge the run's
small fragments (`FeatureStore.merge_fragments`; the driver only commits the merge), and one more task builds or
extends the hash index over the run's rows (`FeatureStore.finish`). Workers need the workspace's
`features/` folder and the images at the paths in the collection (one machine, a shared filesystem, or
object storage: `curata.objectstore`).
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curata.features.base import Extractor
from curata.features.engine import (
    PART_SIZE,
    ComputePlan,
    FeatureRun,
    feature_lock,
    load_batch,
    plan_compute,
    transform_loaded,
)
from curata.features.store import FeatureStore, write_fragments
from curata.progress import SILENT, Reporter
from curata.scale.runtime import actor_pool, frame_dataset, limit_threads, quiet_data_context, ray_runtime
from curata.workspace import Workspace

WINDOW_ITEMS = 50_000  # items the driver plans at a time (about 2 KB each while planned)
WRITE_ROWS = 512  # items an actor writes as one fragment: a few hundred fragments per 100k items, not thousands


def write_rows(batch_size: int, items: int, actors: int) -> int:
    """Rows per Ray Data batch, i.e. per fragment file, in whole model batches: WRITE_ROWS, or fewer so that
    every actor gets four batches or more (a small job is not one actor's work while the others wait)."""
    rows = min(WRITE_ROWS, max(batch_size, math.ceil(items / (actors * 4))))
    return max(batch_size, rows // batch_size * batch_size)


class FeatureActor:
    """One model replica: built once per actor, then called on batches of (hash, source) rows, whose vectors it
    writes as fragment files of the store's table (`curata.features.store.write_fragments`). It returns only
    their metadata and counts: the driver commits them and never holds a vector."""

    def __init__(self, extractor: Extractor, threads: int, target: str, batch_size: int):
        limit_threads(threads)
        self.extractor = extractor
        self.target = target
        self.batch_size = batch_size
        import ray

        self.node = ray.get_runtime_context().get_node_id()  # reported with each batch: where the work ran
        # Image decoding releases the GIL: a couple of loader threads keep the model fed.
        self.pool = ThreadPoolExecutor(max_workers=max(2, threads))

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch["source"].to_pylist()
        parts, errors = [], []
        for start in range(0, len(sources), self.batch_size):  # the model's batches; one fragment for them all
            loaded = load_batch(self.extractor, sources[start : start + self.batch_size], self.pool)
            part, part_errors = transform_loaded(self.extractor, loaded)
            parts.append(part)
            errors += part_errors
        vectors = np.concatenate(parts)
        fragments = write_fragments(self.target, batch["hash"].to_pylist(), vectors, errors, vectors.shape[1])
        return pa.table({"fragments": [json.dumps(fragments)], "rows": [len(errors)],
                         "errors": [sum(e is not None for e in errors)], "node": [self.node]})


def _commit_written(results: Any, store: FeatureStore, run: FeatureRun, advance: Any) -> set[str]:
    """Commit the fragments the actors wrote, one commit per PART_SIZE rows or so (a killed run keeps every
    committed part), counting failures; returns the nodes whose actors computed."""
    pending: list[str] = []
    size = 0
    nodes: set[str] = set()

    def flush() -> None:
        nonlocal size
        store.commit_fragments(pending)
        pending.clear()
        size = 0

    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for fragments, rows, errors, node in zip(table["fragments"].to_pylist(), table["rows"].to_pylist(),
                                                 table["errors"].to_pylist(), table["node"].to_pylist(), strict=True):
            pending.extend(json.loads(fragments))
            size += rows
            run.errors += errors
            nodes.add(node)
            advance(rows)
        if size >= PART_SIZE:
            flush()
    flush()
    return nodes


def compute_ray(extractor: Extractor, workspace: Workspace, *, batch_size: int = 32, refit: bool = False,
                address: str | None = None, num_cpus: int | None = None, actors: int | None = None,
                reporter: Reporter = SILENT) -> FeatureRun:
    """Compute `extractor` for every item of the workspace that lacks it, on Ray.

    `address`: an existing cluster (`ray://host:10001`, `auto`); without it a local runtime with
    `num_cpus` CPUs is started (and stopped), unless Ray is already initialised in this process.
    `actors`: model replicas (default: one per CPU). Returns the same `FeatureRun` as the local engine.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    from curata.features.concat import ConcatExtractor

    if isinstance(extractor, ConcatExtractor):  # no store of its own: each block in its own (engine.compute)
        runs = [compute_ray(b, workspace, batch_size=batch_size, refit=refit, address=address, num_cpus=num_cpus,
                            actors=actors, reporter=reporter) for b in extractor.blocks]
        return FeatureRun(extractor.key, runs[0].items, min(r.cached for r in runs), max(r.computed for r in runs),
                          max(r.errors for r in runs), sum(r.seconds for r in runs), any(r.fitted for r in runs),
                          [n for r in runs for n in r.notes])
    with feature_lock(extractor, workspace, reporter):
        return _compute_ray(extractor, workspace, batch_size, refit, address, num_cpus, actors, reporter)


def _advance_skipped(advance: Any, plan: ComputePlan, counted: int) -> int:
    """Advance the bar by the items planned but not to compute (stored, or content met before) since `counted`;
    returns the new count. Never backwards: a repair in mid-run makes the plan start its count again."""
    skipped = plan.checked - plan.run.computed
    advance(max(0, skipped - counted))
    return max(counted, skipped)


def _rewrite_fragments(task: Any, uri: str) -> Any:
    """Runs in a Ray task: one Lance compaction task's rewrite of the table at `uri`."""
    import lance

    return task.execute(lance.dataset(uri))


def _give_back_memory() -> None:
    """Return the memory a window freed to the system: glibc keeps freed blocks of its many arenas, and Arrow's
    pool (mimalloc) its freed pages, so the driver's resident size grew by each window's leftovers (malloc_trim:
    Linux only; elsewhere a no-op)."""
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # this process's own symbols: glibc's, if any
    if trim is not None:
        trim(0)


def _finish_store(folder: str) -> None:
    """Runs in a Ray task: the store's end-of-run upkeep (the hash index over the run's rows, built or extended),
    so that the memory it takes is a worker's, not the driver's."""
    from curata.features.store import FeatureStore
    from curata.storage import location

    FeatureStore.in_folder(location(folder)).finish()


def _rewrite_on_ray(tasks: list[Any], uri: str) -> list[Any]:
    """The rewrites of a Lance compaction plan (`tables.compact_with`), one Ray task each, over the nodes."""
    import ray

    rewrite = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_rewrite_fragments)
    return ray.get([rewrite.remote(task, uri) for task in tasks])


def _compute_ray(extractor: Extractor, workspace: Workspace, batch_size: int, refit: bool, address: str | None,
                 num_cpus: int | None, actors: int | None, reporter: Reporter) -> FeatureRun:
    # Fit once, on the driver; then plan WINDOW_ITEMS items at a time, so what the driver holds to plan does not
    # grow with the collection. Each window is one Ray Data job whose vectors are committed before the next is
    # planned.
    plan = plan_compute(extractor, workspace, refit=refit, reporter=reporter, window=WINDOW_ITEMS)
    advance: Any = None
    nodes: set[str] = set()
    counted = 0  # items not to compute (stored, or content met before) advanced on the bar of every item
    with ExitStack() as running:
        for todo in plan.windows():
            if advance is None:  # the first window with work starts Ray: nothing to do starts nothing
                import ray

                advance = reporter.task(f"{extractor.name} (ray)", plan.run.items)
                running.enter_context(ray_runtime(address, num_cpus))
                running.enter_context(quiet_data_context())
                pool = actor_pool(actors)
            counted = _advance_skipped(advance, plan, counted)

            frame = pd.DataFrame({"hash": list(todo), "source": list(todo.values())})
            del todo
            rows = write_rows(batch_size, len(frame), pool.actors)
            results = frame_dataset(frame, rows, pool.actors).map_batches(
                FeatureActor,
                fn_constructor_kwargs={"extractor": extractor, "threads": pool.threads,
                                       "target": plan.store.fragment_target(), "batch_size": batch_size},
                batch_size=rows,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=pool.actors),
                num_cpus=pool.cpus,
                scheduling_strategy="SPREAD",  # replicas over every node, not packed on the first
            )
            try:
                nodes |= _commit_written(results, plan.store, plan.run, advance)
            except BaseException:  # interrupted: what was appended is indexed, the plan mark stays
                plan.store.finish()
                raise
            del frame, results  # this window's table and job, before the next window is planned
            _give_back_memory()
        if advance is not None:  # the run's small fragments merged and indexed by workers too, while Ray is up
            _advance_skipped(advance, plan, counted)
            plan.store.merge_fragments(_rewrite_on_ray)
            ray.get(ray.remote(num_cpus=1)(_finish_store).remote(str(plan.store.path)))
    if nodes:
        plan.run.nodes = len(nodes)
        plan.run.notes.append(f"{extractor.name}: computed by actors on {len(nodes)} Ray "
                              f"node{'s' if len(nodes) != 1 else ''}")
    plan.finish()
    plan.run.seconds = time.perf_counter() - plan.started
    return plan.run
