"""Machine-local settings: where derived files live (ONNX exports of bundled models) and how many
CPU threads model runtimes may use."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$CURATA_CACHE` if set, else `~/.cache/curata`. Not created here; writers create subfolders."""
    env = os.environ.get("CURATA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "curata"


def default_threads() -> int:
    """Threads for one model runtime: `$CURATA_THREADS`, else the cores this process may run on.

    Using the affinity mask (not os.cpu_count) matters in containers and under taskset, where
    oversubscribing threads makes ONNX Runtime and torch markedly slower, not faster.
    """
    env = os.environ.get("CURATA_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not available on macOS / Windows
        return max(1, os.cpu_count() or 1)
