"""`compute_ray`: the feature engine's work spread over a Ray cluster with Ray Data.

The driver does what needs the whole collection, exactly as the local engine does (it calls the same
`plan_compute`): fit collection-dependent extractors once with `ensure_fitted`, and diff the items
against the feature store so only missing content hashes are computed. The missing (hash, source) pairs
become a Ray dataset; `map_batches` runs them through a pool of actors, each holding one copy of the
extractor (fitted state included: extractors pickle without their native sessions, by the `_lazy` rule
of `features/base.py`, and load their model once per actor on first use). Each actor loads and
transforms through the local engine's own `load_batch` and `transform_loaded`, so an unreadable image
or a failing item gets the same error string as locally and never fails its batch.

Results stream back to the driver, which appends them to the workspace's feature store in parts of
`PART_SIZE` rows with `FeatureStore.append` (atomic, append-only). So `load_matrix`, every later stage
and the vector index read them like locally computed features, a killed run keeps every finished
part, failed rows stay uncached (retried next run), and the workspace needs no shared filesystem for
its outputs. The driver only receives vectors (5 KB per 1280-d image), far below what one process can
write; the images themselves must be readable by the workers at the paths in the collection.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from curata.features.base import Extractor
from curata.features.engine import PART_SIZE, FeatureRun, feature_lock, load_batch, plan_compute, transform_loaded
from curata.features.store import FeatureStore
from curata.progress import SILENT, Reporter
from curata.scale.runtime import actor_pool, frame_dataset, limit_threads, quiet_data_context, ray_runtime
from curata.workspace import Workspace


class FeatureActor:
    """One model replica: built once per actor, then called on batches of (hash, source) rows."""

    def __init__(self, extractor: Extractor, threads: int):
        limit_threads(threads)
        self.extractor = extractor
        # Image decoding releases the GIL: a couple of loader threads keep the model fed.
        self.pool = ThreadPoolExecutor(max_workers=max(2, threads))

    def __call__(self, batch: pa.Table) -> pa.Table:
        loaded = load_batch(self.extractor, batch["source"].to_pylist(), self.pool)
        vectors, errors = transform_loaded(self.extractor, loaded)
        return feature_table(batch["hash"].to_pylist(), vectors, errors)


def feature_table(hashes: list[str], vectors: np.ndarray, errors: list[str | None]) -> pa.Table:
    """The feature store's part schema: hash, fixed-size float32 vector, error."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    return pa.table({"hash": pa.array(hashes, pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
                     "error": pa.array(errors, pa.string())})


def _drain_into_store(results: Any, store: FeatureStore, run: FeatureRun, advance: Any) -> None:
    """Append the pipeline's output to the store in parts of PART_SIZE rows, counting failures."""
    pending: list[pa.Table] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if not pending:
            return
        table = pa.concat_tables(pending)
        vectors = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        errors = table["error"].to_pylist()
        store.append(table["hash"].to_pylist(), vectors.reshape(len(table), store.dim), errors)
        run.errors += sum(e is not None for e in errors)
        pending.clear()
        size = 0

    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(table)
        size += len(table)
        if size >= PART_SIZE:
            flush()
        advance(len(table))
    flush()


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


def _compute_ray(extractor: Extractor, workspace: Workspace, batch_size: int, refit: bool, address: str | None,
                 num_cpus: int | None, actors: int | None, reporter: Reporter) -> FeatureRun:
    plan = plan_compute(extractor, workspace, refit=refit, reporter=reporter)  # fit once, on the driver
    if plan.todo:  # nothing to do starts nothing
        advance = reporter.task(f"{extractor.name} (ray)", len(plan.todo))
        with ray_runtime(address, num_cpus), quiet_data_context():
            pool = actor_pool(actors)
            import ray

            todo = pd.DataFrame({"hash": list(plan.todo), "source": list(plan.todo.values())})
            results = frame_dataset(todo, batch_size, pool.actors).map_batches(
                FeatureActor,
                fn_constructor_kwargs={"extractor": extractor, "threads": pool.threads},
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=pool.actors),
                num_cpus=pool.cpus,
            )
            try:
                _drain_into_store(results, plan.store, plan.run, advance)
            except BaseException:  # interrupted: what was appended is indexed, the plan mark stays
                plan.store.finish()
                raise
    plan.finish()
    plan.run.seconds = time.perf_counter() - plan.started
    return plan.run
