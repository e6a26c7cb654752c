"""`compute_ray`: the feature engine's work spread over a Ray cluster, by a pool of long-lived actors.

The driver does what needs the whole collection, exactly as the local engine does (it calls the same
`plan_compute`): fit collection-dependent extractors once with `ensure_fitted`, and diff the items against
the feature store so only missing content hashes are computed, but WINDOW_ITEMS items at a time
(`ComputePlan.windows`, asking the store without scanning it), so what it holds to plan does not grow with the
collection. The actors (one extractor copy each, fitted state included: extractors pickle without their
native sessions, by the `_lazy` rule of `features/base.py`, and load their model once per actor on first use)
are started once for the whole run, spread over the nodes; each window's missing (hash, source) pairs go to them
as small tables, at most IN_FLIGHT per actor queued, built as actors free up. Each actor loads and transforms
through the local engine's own `load_batch` and `transform_loaded`, so an unreadable image or a failing item
gets the same error string as locally and never fails its batch.

Each actor writes its batch's vectors (and per-item errors) straight into the workspace's feature store as
one uncommitted Lance fragment file (`features.store.write_fragments`; WRITE_ROWS items, several model
batches) and returns only its metadata; the driver commits them (`FeatureStore.commit_fragments`, Lance's
distributed write: one commit per `PART_SIZE` rows or so) and never receives a vector. `load_matrix`, every
later stage and the vector index read the rows like locally computed features; a killed run keeps every
committed part (fragments written but never committed are unreferenced files that `curata compact` deletes
once a week old), and failed rows stay uncached (retried next run). At the end one Ray task does the store's
upkeep, whose memory grows with the store: it merges the run's small fragments (`FeatureStore.merge_fragments`,
the rows rewritten by more tasks) and builds or extends the hash index over the run's rows
(`FeatureStore.finish`). Workers need the workspace's `features/` folder and the images at the paths in the
collection (one machine, a shared filesystem, or object storage: `curata.objectstore`).

Not Ray Data: a Ray Data job per window started new actors each time (~3.7 s), which made small windows, and
so a flat driver, cost a run twice its time (measured: 100k items in 70 s with 10k windows against 36 s
with 50k ones).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np
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
from curata.scale.runtime import actor_pool, limit_threads, ray_runtime
from curata.workspace import Workspace

WINDOW_ITEMS = 10_000  # items the driver plans at a time (about 2 KB each while planned)
IN_FLIGHT = 2  # batches queued per actor: the next is there when one finishes
WRITE_ROWS = 512  # items an actor writes as one fragment: a few hundred fragments per 100k items, not thousands


def write_rows(batch_size: int, items: int, actors: int) -> int:
    """Rows per actor call, i.e. per fragment file, in whole model batches: WRITE_ROWS, or fewer so that every
    actor gets four calls or more (a small window is not one actor's work while the others wait)."""
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


def _window_batches(todo: dict[str, str], rows: int) -> Iterator[pa.Table]:
    """A window's (hash, source) pairs as tables of `rows` rows: one actor call, one fragment file each."""
    pairs = iter(todo.items())
    while chunk := list(itertools.islice(pairs, rows)):
        yield pa.table({"hash": [h for h, _ in chunk], "source": [s for _, s in chunk]})


def _run_window(actors: list[Any], batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The actors' results for every batch, as they finish. Each actor has at most IN_FLIGHT batches queued
    (so the next is there when it finishes one), and the driver holds no more than those: the window's
    batches are built as actors free up."""
    import ray

    running: dict[Any, Any] = {}  # a call in flight -> its actor

    def submit(actor: Any) -> None:
        batch = next(batches, None)
        if batch is not None:
            running[actor.__call__.remote(batch)] = actor

    for _ in range(IN_FLIGHT):
        for actor in actors:
            submit(actor)
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        actor = running.pop(done)
        yield ray.get(done)
        submit(actor)


def _commit_written(results: Iterable[pa.Table], store: FeatureStore, run: FeatureRun, advance: Any) -> set[str]:
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

    for table in results:
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
    """Runs in a Ray task: the store's end-of-run upkeep, so that the memory it takes is a worker's, not the
    driver's (it grows with the store): the run's small fragments merged (their rows rewritten by more tasks,
    `_rewrite_on_ray`, the commit here), then the hash index over the run's rows built or extended."""
    from curata.features.store import FeatureStore
    from curata.storage import location

    store = FeatureStore.in_folder(location(folder))
    store.merge_fragments(_rewrite_on_ray)
    store.finish()


def _rewrite_on_ray(tasks: list[Any], uri: str) -> list[Any]:
    """The rewrites of a Lance compaction plan (`tables.compact_with`), one Ray task each, over the nodes."""
    import ray

    rewrite = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_rewrite_fragments)
    return ray.get([rewrite.remote(task, uri) for task in tasks])


def _compute_ray(extractor: Extractor, workspace: Workspace, batch_size: int, refit: bool, address: str | None,
                 num_cpus: int | None, actors_wanted: int | None, reporter: Reporter) -> FeatureRun:
    # Fit once, on the driver; then plan WINDOW_ITEMS items at a time, so what the driver holds to plan does not
    # grow with the collection. Each window is one Ray Data job whose vectors are committed before the next is
    # planned.
    plan = plan_compute(extractor, workspace, refit=refit, reporter=reporter, window=WINDOW_ITEMS)
    advance: Any = None
    nodes: set[str] = set()
    counted = 0  # items not to compute (stored, or content met before) advanced on the bar of every item
    actors: list[Any] = []
    with ExitStack() as running:
        for todo in plan.windows():
            if not actors:  # the first window with work starts Ray and the actors: nothing to do starts nothing
                import ray

                advance = reporter.task(f"{extractor.name} (ray)", plan.run.items)
                running.enter_context(ray_runtime(address, num_cpus))
                pool = actor_pool(actors_wanted)
                # Replicas over every node, not packed on the first; a crashed actor is restarted and its call
                # retried (a fragment written twice is never committed twice: only returned metadata is).
                replica = ray.remote(FeatureActor).options(num_cpus=pool.cpus, scheduling_strategy="SPREAD",
                                                           max_restarts=2, max_task_retries=2)
                actors = [replica.remote(extractor, pool.threads, plan.store.fragment_target(), batch_size)
                          for _ in range(pool.actors)]
                for actor in actors:  # killed at the end, also in a runtime this run joined
                    running.callback(ray.kill, actor)
            counted = _advance_skipped(advance, plan, counted)
            rows = write_rows(batch_size, len(todo), len(actors))
            try:
                nodes |= _commit_written(_run_window(actors, _window_batches(todo, rows)), plan.store, plan.run,
                                         advance)
            except BaseException:  # interrupted: what was appended is indexed, the plan mark stays
                plan.store.finish()
                raise
            del todo
            _give_back_memory()
        if actors:  # the run's small fragments merged and indexed by workers too, while Ray is up
            _advance_skipped(advance, plan, counted)
            ray.get(ray.remote(num_cpus=1)(_finish_store).remote(str(plan.store.path)))
    if nodes:
        plan.run.nodes = len(nodes)
        plan.run.notes.append(f"{extractor.name}: computed by actors on {len(nodes)} Ray "
                              f"node{'s' if len(nodes) != 1 else ''}")
    plan.finish()
    plan.run.seconds = time.perf_counter() - plan.started
    return plan.run
