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
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

STAGING = ".staging"  # hidden, and one level down, so `models/*/card.json` globs never see a staged bundle
_STAGED = re.compile(r"\.(\d+)-[0-9a-f]{8}(\.old)?$")  # <name>.<writer pid>-<random>[.old]


def name_file(error: BaseException, path: Path) -> None:
    """Note which file was being written on an OSError raised without a file name (pyarrow, joblib,
    torch), so the CLI can name it (`written_file`; setting `filename` would change the message)."""
    if isinstance(error, OSError) and error.filename is None and not hasattr(error, "written_file"):
        error.written_file = str(path)  # type: ignore[attr-defined]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        sync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        name_file(e, path)
        raise


@contextlib.contextmanager
def replace_folder(directory: Path) -> Iterator[Path]:
    """Yield an empty staging folder to write into. If the block succeeds, the staging folder replaces
    `directory` (the previous one, if any, is deleted); if it raises, `directory` is left untouched."""
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
