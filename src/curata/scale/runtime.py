"""Connecting to Ray and sizing the actor pool, shared by the feature and prediction pipelines.

Ray is imported inside the functions: `import ray` costs about a second, and nothing but `--engine ray`
needs it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from curata.features.engine import PART_SIZE
from curata.paths import default_threads

# Logical CPUs the actor pool leaves free. Ray Data's file reads start with a ListFiles task that asks
# for a whole CPU; an actor pool that reserves more than (total - 1) starves it and the pipeline hangs
# (DESIGN.md; measured here on 2- and 1-CPU runtimes). Read tasks themselves ask for READ_CPUS.
FREE_CPUS = 1.0
READ_CPUS = 0.5


_held = 0  # open lazy `ray_runtime` blocks: a runtime started inside one outlives the inner blocks


@contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None, *, lazy: bool = False) -> Iterator[None]:
    """Connect to the cluster at `address`, or start a local Ray runtime with `num_cpus` CPUs (default:
    the cores this process may use), and shut down on exit what was started here.

    A runtime that is already initialised (a test fixture, a notebook) is used as it is and left running.
    `lazy`: start nothing now; a runtime that an inner `ray_runtime` starts (the first extractor with work
    to do) is kept for the rest of the block and shut down when it ends, so several extractors share one.
    """
    global _held
    import ray

    if address and num_cpus:
        raise ValueError("--ray-cpus sizes a local Ray runtime; the cluster at --ray-address has its own CPUs")
    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"--ray-cpus must be at least 1, got {num_cpus}")
    if ray.is_initialized():
        yield
        return
    if lazy:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
            if ray.is_initialized():
                ray.shutdown()
        return
    # log_to_driver=False: worker chatter would interleave with our progress bars and --json output;
    # failures still reach the driver as exceptions.
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
    else:
        # address="local": a new runtime of our own, even where a `ray start` cluster runs (or its stale address
        # file remains after a kill) on this machine, which a bare ray.init() would try to join.
        ray.init(address="local", num_cpus=num_cpus or default_threads(), include_dashboard=False, **common)
    try:
        yield
    finally:
        if not _held:
            ray.shutdown()


@contextmanager
def quiet_data_context(preserve_order: bool = False) -> Iterator[None]:
    """Ray Data's own progress bars and INFO lines off for the block (curata reports progress itself),
    restored afterwards so a caller's settings survive."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order)
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = preserve_order
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # A job smaller than the pool (a rerun computing 3 items) is fine, not worth a warning.
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            yield
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved
        logger.setLevel(level)


@dataclass(frozen=True)
class ActorPool:
    """How many model actors run, the logical CPUs each reserves, and the threads each one's model runtime
    and image loader may use."""

    actors: int
    cpus: float
    threads: int


def actor_pool(actors: int | None = None) -> ActorPool:
    """Default: one actor per CPU of the cluster with one model thread each. The actors share each node's
    logical CPUs less FREE_CPUS (on a 2-CPU runtime: 0.5 each; on 1 CPU: none, Ray then only counts the
    read tasks). Fewer actors than CPUs get more threads each."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    nodes = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    nodes = [c for c in nodes if c > 0] or [total]
    node_cpus = max(nodes)
    n = max(1, int(total)) if actors is None else actors
    if n < 1:
        raise ValueError(f"--ray-actors must be at least 1, got {n}")
    # FREE_CPUS on every node, not only in total: Ray Data spreads actors over the nodes, and a read task
    # needs its CPU on a single node.
    per_node = math.ceil(n / len(nodes))
    cpus = round(max(0.0, min((total - FREE_CPUS) / n, (node_cpus - FREE_CPUS) / per_node)), 2)
    threads = max(1, round(min(total, node_cpus) / n)) if n < total else 1
    return ActorPool(actors=n, cpus=cpus, threads=threads)


def frame_dataset(frame: pd.DataFrame, batch_size: int, actors: int) -> Any:
    """A table built on the driver as a Ray dataset, in blocks small enough that every actor gets several
    (load balance) and large enough to hold whole batches."""
    import ray

    rows = max(batch_size, min(PART_SIZE, math.ceil(len(frame) / (actors * 4))))
    return ray.data.from_pandas([frame.iloc[i : i + rows] for i in range(0, len(frame), rows)] or [frame])


def limit_threads(threads: int) -> None:
    """Called first thing in an actor: model runtimes created later (ONNX Runtime, torch) read
    CURATA_THREADS through `curata.paths.default_threads`, so actors sharing a node do not each start
    one thread per core."""
    os.environ["CURATA_THREADS"] = str(threads)
