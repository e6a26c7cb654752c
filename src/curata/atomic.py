"""Crash-safe writes: a file or a whole folder is written under a temporary name, then renamed into place.

A kill -9, a power cut or a full disk in the middle of a write therefore leaves the previous version
whole (or nothing), never half a file that a later command fails to read. Folders (model bundles,
vector indexes, fitted extractor state) are staged in `<parent>/.staging/` and swapped in with one
rename: an atomic exchange where the kernel offers one (Linux `renameat2`), so there is no moment
when the folder is missing, else two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curata.storage import StorePath, is_remote

STAGING = ".staging"  # hidden, and one level down, so `models/*/card.json` globs never see a staged bundle
_STAGED = re.compile(r"\.(\d+)-[0-9a-f]{8}(\.old)?$")  # <name>.<writer pid>-<random>[.old]


def name_file(error: BaseException, path: Path) -> None:
    """Note which file was being written on an OSError raised without a file name (pyarrow, joblib,
    torch), so the CLI can name it (`written_file`; setting `filename` would change the message)."""
    if isinstance(error, OSError) and error.filename is None and not hasattr(error, "written_file"):
        error.written_file = str(path)  # type: ignore[attr-defined]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temp file in the same folder, fsynced, then renamed; on object storage one PUT,
    which is atomic by itself."""
    if is_remote(path):
        try:
            path.write_bytes(data)
        except BaseException as e:
            name_file(e, path)
            raise
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        sync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        name_file(e, path)
        raise


def atomic_write_parquet(frame: Any, path: Path) -> None:
    """A DataFrame as a Parquet file, written atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def replace_folder(directory: Path) -> Iterator[Path]:
    """Yield an empty staging folder to write into. If the block succeeds, the staging folder replaces
    `directory` (the previous one, if any, is deleted); if it raises, `directory` is left untouched."""
    if is_remote(directory):
        with _replace_remote_folder(directory) as tmp:
            yield tmp
        return
    directory = Path(directory)
    staging = directory.parent / STAGING
    tmp = staging / f"{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    _clean_stale(staging)
    try:
        yield tmp
        _sync_tree(tmp)  # on disk before the rename makes it visible: a power cut leaves old or new, whole
        if not directory.exists():
            tmp.rename(directory)
        elif not _exchange(tmp, directory):
            old = staging / f"{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old"
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        sync_dir(directory.parent)
    except BaseException as e:
        name_file(e, directory)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after an exchange, it holds the previous folder
        with contextlib.suppress(OSError):  # only when empty: another writer may be staging there
            staging.rmdir()


CURRENT = "CURRENT"  # on object storage: the name of the folder's published generation


@contextlib.contextmanager
def _replace_remote_folder(directory: StorePath) -> Iterator[Path]:
    """`replace_folder` on object storage, where nothing renames: the folder is staged locally, uploaded as a new
    generation (`<directory>/<generation>/...`), then published by one PUT of `<directory>/CURRENT`. Readers go
    through `folder_view`, so they see the old generation or the new one, whole; a writer killed before the
    PUT leaves an unpublished generation, deleted by a later writer."""
    tmp = Path(tempfile.mkdtemp(prefix="curata-folder-"))
    try:
        yield tmp
        generation = f"g{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                (directory / generation / file.relative_to(tmp).as_posix()).write_bytes(file.read_bytes())
        pointer = directory / CURRENT
        try:
            previous = pointer.read_text().strip()
        except FileNotFoundError:
            previous = ""
        pointer.write_text(generation)
        for entry in directory.iterdir():  # the generation replaced, and those of writers that died unpublished
            if entry.name not in (generation, CURRENT) and (entry.name == previous or _abandoned(entry.name)):
                entry.rmtree()
    except BaseException as e:
        name_file(e, directory)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _abandoned(generation: str, after_s: float = 3600.0) -> bool:
    """Whether a generation neither current nor just replaced was started over `after_s` ago: its writer died
    before publishing it (a live one publishes within that), or a reader still had it (it has its copy)."""
    found = re.fullmatch(r"g(\d+)-[0-9a-f]{8}", generation)
    return found is not None and (time.time_ns() - int(found.group(1))) / 1e9 > after_s


def folder_view(directory: Path | StorePath) -> Path:
    """A local folder holding what `replace_folder` last published at `directory`: the folder itself on local
    disk; on object storage, the current generation copied once into the cache (generations never change, so
    later reads in any process reuse the copy; the copies of the generations it replaced are deleted). A folder
    never published gives a path that does not exist."""
    if not is_remote(directory):
        return Path(directory)
    from curata.paths import cache_dir

    copies = cache_dir() / "folders" / hashlib.sha256(str(directory).encode()).hexdigest()[:24]
    for _ in range(3):  # a writer may publish, and delete the generation being copied, meanwhile
        try:
            generation = (directory / CURRENT).read_text().strip()
        except FileNotFoundError:
            return copies / "unpublished"
        local = copies / generation
        if local.is_dir():
            return local
        staged = copies / f".{generation}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for path, _ in (directory / generation).walk_files():
                target = staged / path.relative_to(directory / generation)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        except FileNotFoundError:
            shutil.rmtree(staged, ignore_errors=True)
            continue
        staged.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(local)
        except OSError:  # another process copied it first
            shutil.rmtree(staged, ignore_errors=True)
        for entry in copies.iterdir():  # older generations, and copies a killed process left half done
            found = _STAGED.search(entry.name)
            if entry.name != generation and (not entry.name.startswith(".") or (found and writer_gone(found.group(1)))):
                shutil.rmtree(entry, ignore_errors=True)
        return local
    raise OSError(f"{directory} was republished three times while it was being read; try again")


def sync_dir(directory: Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """fsync one file written by a library that does not (pyarrow, joblib)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (a staged bundle or index: a handful of files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            sync_file(Path(folder, name))
        sync_dir(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic rename (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def writer_gone(pid: str | int) -> bool:
    """Whether the process that staged a file (its pid is in the file's name) no longer exists, so what it
    left can be deleted. Another user's live process (PermissionError) counts as alive."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return False


def _clean_stale(staging: Path) -> None:
    """Delete what writers killed mid-write left behind (their process is gone); live writers' folders stay."""
    for entry in staging.iterdir():
        found = _STAGED.search(entry.name)
        if found is not None and writer_gone(found.group(1)):
            shutil.rmtree(entry, ignore_errors=True)
