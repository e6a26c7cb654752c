"""Shared ONNX Runtime plumbing: export a torch model once per machine, and open CPU sessions.

Used by the EfficientNet-Lite image extractor and the MiniLM text extractor: both export their
PyTorch model to `cache_dir()/onnx/` the first time they run, then only need onnxruntime.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from curata.paths import cache_dir, default_threads

OPSET = 17


def onnx_dir() -> Path:
    """Where exported models live; not created here (export_once creates it)."""
    return cache_dir() / "onnx"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock so that concurrent processes don't all export the same model."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename in export_once still keeps the file whole
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def export_once(target: Path, write: Callable[[str], None], *, force: bool = False) -> Path:
    """Create `target` once: `write(tmp_path)` runs under a file lock into a temporary file that is
    then renamed over `target`, so readers never see a half-written model. Returns `target`."""
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        if target.exists() and not force:  # another process exported it while we waited
            return target
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def make_session(
    path: Path, threads: int | None = None, *, spinning: bool = False, config: dict[str, str] | None = None
) -> Any:
    """A sequential CPU InferenceSession with `threads` intra-op threads (None -> default_threads()).

    `spinning`: whether idle pool threads busy-wait for the next run. Each extractor says why it
    picks what it picks; spinning only pays when runs follow each other with no other CPU work between.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def open_session(
    export: Callable[..., Path],
    threads: int | None = None,
    *,
    spinning: bool = False,
    config: dict[str, str] | None = None,
) -> Any:
    """Session on the file `export()` returns; a file that fails to load (damaged outside our atomic
    write: disk full, manual edit) is exported again once with `export(force=True)`."""
    try:
        return make_session(export(), threads, spinning=spinning, config=config)
    except Exception:
        return make_session(export(force=True), threads, spinning=spinning, config=config)
