"""`ingest --engine ray`: the images of a source verified and hashed in Ray tasks.

Verification (open, full decode, pixel cap, sha256) is the CPU-bound part of an ingest of millions of images;
everything else (reading the source, duplicate ids, the report, the commit of each part of the source) stays on
the driver, exactly as the local engine does it (`curata.ingest.pipeline.ingest_records`, which calls this once
per part, in one Ray runtime for the whole run). Each task checks a chunk
of paths with the local engine's own `check_image`, so a bad file gets the same code and reason, and returns
only the small per-image results (hash, size, mode, notes or error): the driver never receives pixels. At most
two tasks per cluster CPU are in flight, so a huge source does not queue millions of task specs at once.
Workers need the images at the paths the source names (one machine, or a shared filesystem).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from curata.scale.runtime import ray_runtime

if TYPE_CHECKING:
    from curata.ingest.pipeline import CheckedImage

MAX_CHUNK = 256  # paths per task: large enough that scheduling costs little beside decoding


def _check_chunk(paths: Sequence[str], max_pixels: int, max_file_bytes: int) -> tuple[str, list[CheckedImage]]:
    """Runs in a Ray task: the node it ran on and each path's check, in order."""
    import ray

    from curata.ingest.pipeline import check_image

    return (ray.get_runtime_context().get_node_id(),
            [check_image(p, max_pixels, max_file_bytes) for p in paths])


def check_images_ray(paths: Sequence[str], max_pixels: int, max_file_bytes: int, *, address: str | None = None,
                     num_cpus: int | None = None, advance: Callable[[int], Any] = lambda _n: None
                     ) -> tuple[list[CheckedImage], set[str]]:
    """Each path's check (as `check_image` gives it), in the order of `paths`, and the Ray nodes that ran them.

    `address`: an existing cluster; without it a local runtime with `num_cpus` CPUs is started and stopped
    (unless Ray is already initialised in this process)."""
    if not paths:
        return [], set()
    with ray_runtime(address, num_cpus):
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        chunk = max(1, min(MAX_CHUNK, math.ceil(len(paths) / (cpus * 8))))  # several chunks per CPU: balance
        task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_check_chunk)
        starts = iter(range(0, len(paths), chunk))
        running: dict[Any, int] = {}
        results: dict[int, list[CheckedImage]] = {}
        nodes: set[str] = set()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                running[task.remote(list(paths[start : start + chunk]), max_pixels, max_file_bytes)] = start

        for _ in range(cpus * 2):
            submit()
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            start = running.pop(done)
            node, checked = ray.get(done)
            results[start] = checked
            nodes.add(node)
            advance(len(checked))
            submit()
    return [c for start in sorted(results) for c in results[start]], nodes
