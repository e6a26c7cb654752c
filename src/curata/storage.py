"""A workspace on object storage: `-w s3://bucket/prefix` (or `gs://`, `az://`, any URL the Rust `object_store`
crate reads, the same crate Lance uses, so both read one configuration).

The workspace's Lance tables are opened by URI and read and written in place by every node. Its other files
(reports, history, bundles, journals, hash runs) are objects under the same prefix, reached through
`StorePath`: the part of `pathlib.Path` the workspace code uses, over `obstore`. A `StorePath` has no
`__fspath__`, so a call that only takes local files (`open()`, `os.replace`, `fcntl`) fails loudly instead of
writing a local folder named `s3:`.

What differs from a folder, and how the code copes:
- a PUT is atomic and there is no rename: a file is written whole in one PUT (`atomic_write_bytes` does that),
  and a folder that must change atomically (a model bundle) is written by `atomic.replace_folder` as a new
  generation and published by one PUT of its pointer;
- there is no `flock`: `lease` holds a lock object created with a conditional PUT (create only if absent),
  refreshed while held and taken over once its holder stopped refreshing it (a killed process);
- there is no append: the edit journal and the collection's history write one object per entry.

Credentials, region and endpoint come from the environment as the cloud's own tools read them
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for a
loopback server; `GOOGLE_*`, `AZURE_*`), never from curata's options or files.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]+)(/.*)?$")
LOCAL_SCHEMES = ("file",)
LEASE_S = 60.0  # a lock whose holder has not refreshed it for this long is taken over
_stores: dict[str, Any] = {}
_stores_lock = threading.Lock()


def is_uri(root: str | os.PathLike[str]) -> bool:
    """Whether `root` names a place on object storage (`s3://bucket/prefix`), not a local folder."""
    found = URI.match(str(root)) if isinstance(root, str) else None
    return found is not None and found.group(1).lower() not in LOCAL_SCHEMES


def location(root: str | os.PathLike[str]) -> Path | StorePath:
    """A workspace root: a `StorePath` for an object-store URL, else a local `Path`."""
    if isinstance(root, StorePath):
        return root
    if isinstance(root, str) and is_uri(root):
        return StorePath(root)
    return Path(root)


def is_remote(path: object) -> bool:
    return isinstance(path, StorePath)


class StorageError(OSError):
    """Object storage unreachable or refusing (credentials, region, endpoint, permissions): one line, exit 2."""


def _store(base: str) -> Any:
    """One client per bucket and process (`base`: `scheme://bucket`), configured from the environment."""
    with _stores_lock:
        store = _stores.get(base)
        if store is None:
            from obstore.store import from_url

            try:
                store = from_url(base)
            except Exception as e:  # obstore's messages name the URL and the reason, never a secret
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise StorageError(f"cannot open object storage at {base} ({reason[:300]}); check the credentials, "
                                   "region and endpoint in the environment (AWS_*, GOOGLE_*, AZURE_*)") from None
            _stores[base] = store
        return store


def _call(operation: Callable[..., Any], store: Any, *args: Any, **kwargs: Any) -> Any:
    """An obstore call whose failures (other than a missing object and a lost condition, which callers handle)
    become one-line OSErrors naming the store: no debug dump, never a credential."""
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    try:
        return operation(store, *args, **kwargs)
    except (FileNotFoundError, AlreadyExistsError, PreconditionError):
        raise
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"object storage refused or could not be reached ({reason[:300]}); check the "
                           "credentials, region and endpoint in the environment (AWS_*, GOOGLE_*, AZURE_*)") from None


class StorePath:
    """A path under an object-store URL, with the `pathlib.Path` methods the workspace code uses."""

    def __init__(self, uri: str):
        found = URI.match(uri)
        if found is None:
            raise ValueError(f"not an object-store URL: {uri}")
        self._base = f"{found.group(1).lower()}://{found.group(2)}"
        self.key = str(PurePosixPath("/" + (found.group(3) or "").strip("/")))[1:]  # "" at the bucket's root

    # Names ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self._base}/{self.key}" if self.key else self._base

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: StorePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | os.PathLike[str]) -> StorePath:
        part = str(part).strip("/")
        return StorePath(f"{self}/{part}") if part else self

    def joinpath(self, *parts: str) -> StorePath:
        path = self
        for part in parts:
            path = path / part
        return path

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def parent(self) -> StorePath:
        parent = PurePosixPath(self.key).parent.as_posix()
        return StorePath(self._base if parent == "." else f"{self._base}/{parent}")

    @property
    def parts(self) -> tuple[str, ...]:
        return (self._base, *PurePosixPath(self.key).parts)

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> StorePath:
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: StorePath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def expanduser(self) -> StorePath:
        return self

    def resolve(self) -> StorePath:
        return self

    def absolute(self) -> StorePath:
        return self

    # Reading --------------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        return _store(self._base)

    def _head(self) -> dict[str, Any] | None:
        import obstore

        try:
            return _call(obstore.head, self.store, self.key)
        except FileNotFoundError:
            return None

    def is_file(self) -> bool:
        return bool(self.key) and self._head() is not None

    def is_dir(self) -> bool:
        """Whether any object lies under this prefix (object storage has no empty folders)."""
        import obstore

        prefix = f"{self.key}/" if self.key else None
        first = _call(lambda store: next(iter(obstore.list(store, prefix, chunk_size=1)), []), self.store)
        return bool(first)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> os.stat_result:
        meta = self._head()
        if meta is None:
            raise FileNotFoundError(f"object not found: {self}")
        mtime = meta["last_modified"].timestamp()
        ns = int(mtime * 1e9)
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, int(meta["size"]), int(mtime), int(mtime), int(mtime),
                               mtime, mtime, mtime, ns, ns, ns))

    def read_bytes(self) -> bytes:
        import obstore

        try:
            return bytes(_call(obstore.get, self.store, self.key).bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"object not found: {self}") from None

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def iterdir(self) -> Iterator[StorePath]:
        """The objects and sub-prefixes directly under this one."""
        import obstore

        listing = _call(obstore.list_with_delimiter, self.store, self.key or None)
        for prefix in listing["common_prefixes"]:
            yield StorePath(f"{self._base}/{prefix}")
        for meta in listing["objects"]:
            if meta["path"] != self.key:
                yield StorePath(f"{self._base}/{meta['path']}")

    def walk_files(self) -> Iterator[tuple[StorePath, int]]:
        """Every object under this prefix, at any depth, with its size."""
        import obstore

        prefix = f"{self.key}/" if self.key else None
        for meta in _call(lambda store: obstore.list(store, prefix).collect(), self.store):
            yield StorePath(f"{self._base}/{meta['path']}"), int(meta["size"])

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Objects (and prefixes holding objects) matching `pattern`, one name per `/`-separated part."""
        depth = pattern.count("/") + 1
        seen: set[str] = set()
        for path, _ in self.walk_files():
            parts = path.relative_to(self).parts
            if len(parts) < depth:
                continue
            candidate = "/".join(parts[:depth])
            if candidate not in seen and fnmatch.fnmatchcase(candidate, pattern):
                seen.add(candidate)
                yield self / candidate

    def open(self, mode: str = "r", encoding: str | None = "utf-8", **_: Any) -> Any:
        """A file object: read modes hold the whole object; write modes PUT it whole when closed (there is no
        append on object storage)."""
        if mode in ("r", "rt"):
            return io.StringIO(self.read_text(encoding or "utf-8"))
        if mode == "rb":
            return io.BytesIO(self.read_bytes())
        if mode in ("w", "wt", "wb"):
            return _Upload(self, text="b" not in mode, encoding=encoding or "utf-8")
        raise ValueError(f"mode {mode!r} is not supported on object storage ({self})")

    # Writing --------------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> int:
        import obstore

        _call(obstore.put, self.store, self.key, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False, mode: int = 0o777) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""

    def touch(self, exist_ok: bool = True) -> None:
        if not self.is_file():
            self.write_bytes(b"")

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore

        if not missing_ok and self._head() is None:
            raise FileNotFoundError(f"object not found: {self}")
        _call(obstore.delete, self.store, self.key)

    def rmtree(self) -> None:
        """Delete every object under this prefix (and the object of this name, if any)."""
        import obstore

        keys = [path.key for path, _ in self.walk_files()]
        for start in range(0, len(keys), 1000):
            _call(obstore.delete, self.store, keys[start:start + 1000])
        if self.key:
            _call(obstore.delete, self.store, self.key)


class _Upload(io.BytesIO):
    """A writable file whose bytes are PUT as one object when it is closed without an error."""

    def __init__(self, path: StorePath, text: bool, encoding: str):
        super().__init__()
        self._path, self._text, self._encoding = path, text, encoding

    def write(self, data: Any) -> int:  # type: ignore[override]
        return super().write(data.encode(self._encoding) if self._text else data)

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self._path.write_bytes(self.getvalue())
        super().__exit__(kind, *rest)


def readable(path: Path | StorePath) -> Any:
    """What a reader taking a file name or a file object (pandas, pyarrow, numpy) can open: the path itself on
    local disk, the object's bytes in memory on object storage."""
    return io.BytesIO(path.read_bytes()) if isinstance(path, StorePath) else path


def rmtree(path: Path | StorePath) -> None:
    """`shutil.rmtree` for a local folder (missing: nothing to do) or a prefix on object storage."""
    if isinstance(path, StorePath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def lease(path: StorePath, on_wait: Callable[[], None] | None = None, lease_s: float = LEASE_S
          ) -> Iterator[None]:
    """Hold the lock object `path` for the block: created with a conditional PUT, so one holder at a time
    across every node; refreshed every third of `lease_s` while held (a PUT conditional on its ETag); taken over
    (conditionally too) once its ETag has not changed for `lease_s` of this machine's time, i.e. its holder
    stopped refreshing it (a killed process). Clocks of other machines are never compared. Deleted on exit."""
    import obstore
    from obstore.exceptions import PreconditionError

    me = {"holder": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"}
    seen: tuple[str, float] | None = None  # the holder's ETag, and when this process first saw it
    waited = False
    while True:
        tag = _take(path, me, None)
        if tag is not None:
            break
        meta = path._head()
        if meta is not None:
            if seen is None or seen[0] != meta["e_tag"]:
                seen = (meta["e_tag"], time.monotonic())
            elif time.monotonic() - seen[1] > lease_s and (tag := _take(path, me, meta["e_tag"])) is not None:
                break
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(0.2)
    stop = threading.Event()

    def refresh() -> None:
        nonlocal tag
        while not stop.wait(lease_s / 3):
            try:
                body = json.dumps({**me, "at": time.time()}).encode()
                tag = _call(obstore.put, path.store, path.key, body, mode={"e_tag": tag} if tag else "overwrite"
                            )["e_tag"] or tag
            except PreconditionError:
                return  # taken over: this process stalled past the lease
            except OSError:
                pass  # refreshed at the next tick; a lease lost to an outage is the worst case

    keeper = threading.Thread(target=refresh, name=f"curata-lease-{path.name}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        with suppress(OSError, ValueError):
            if json.loads(path.read_bytes()).get("holder") == me["holder"]:
                path.unlink(missing_ok=True)


def _take(path: StorePath, me: dict[str, str], replacing: str | None) -> str | None:
    """Create the lock object (`replacing` None), or replace the one with that ETag; its new ETag ("" where the
    store gives none), or None when another process won."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    body = json.dumps({**me, "at": time.time()}).encode()
    try:
        mode: Any = "create" if replacing is None else {"e_tag": replacing}
        put = _call(obstore.put, path.store, path.key, body, mode=mode)
    except (AlreadyExistsError, PreconditionError, FileNotFoundError):
        return None
    return put["e_tag"] or ""


@contextmanager
def try_lock(path: Path | StorePath, stale_s: float = 10 * LEASE_S) -> Iterator[bool]:
    """Hold the lock at `path` if nobody does (yields True), else yield False at once: a local `flock`, or a lock
    object on object storage (one a killed holder left is taken over once older than `stale_s`, by the store's
    clock: the holders are short upkeep jobs)."""
    if isinstance(path, StorePath):
        me = {"holder": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"}
        held = _take(path, me, None) is not None
        if not held and (meta := path._head()) is not None and (
                datetime.now(UTC) - meta["last_modified"]).total_seconds() > stale_s:
            held = _take(path, me, meta["e_tag"]) is not None
        try:
            yield held
        finally:
            if held:
                path.unlink(missing_ok=True)
        return
    with _flock(path, wait=False) as held:
        yield held


@contextmanager
def hold(path: Path | StorePath, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock at `path`, waiting for it (`on_wait` is called once if another process holds
    it): a local `flock`, released when the file closes (also when the process dies), or a `lease`."""
    if isinstance(path, StorePath):
        with lease(path, on_wait):
            yield
        return
    with _flock(path, wait=True, on_wait=on_wait):
        yield


@contextmanager
def _flock(path: Path, wait: bool, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """An exclusive `flock` on a local lock file: taken at once (True), else waited for (`wait`) or not (False)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield True


def local_copy(path: StorePath) -> Path:
    """A local copy of an object that never changes under its name (a hash run, a generation's file), fetched
    once into the cache (`$CURATA_CACHE/objects/`) and reused by every later read in any process."""
    import hashlib

    from curata.paths import cache_dir

    digest = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    local = cache_dir() / "objects" / digest[:2] / f"{digest}-{path.name}"
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        staged = local.with_name(f".{local.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        staged.write_bytes(path.read_bytes())
        staged.replace(local)
    return local


@contextmanager
def uploaded_folder(directory: StorePath) -> Iterator[Path]:
    """A temporary local folder whose files are uploaded under `directory` when the block succeeds (one PUT
    each, so each file is whole), after which objects under `directory` the block did not write are deleted
    (a previous run's plots). For folders read by people and tools, not swapped atomically: bundles and
    indexes use `atomic.replace_folder`."""
    import shutil
    import tempfile

    local = Path(tempfile.mkdtemp(prefix="curata-upload-"))
    try:
        yield local
        written = set()
        for file in sorted(local.rglob("*")):
            if file.is_file():
                target = directory / file.relative_to(local).as_posix()
                target.write_bytes(file.read_bytes())
                written.add(target.key)
        stale = [path.key for path, _ in directory.walk_files() if path.key not in written]
        if stale:
            import obstore

            _call(obstore.delete, directory.store, stale)
    finally:
        shutil.rmtree(local, ignore_errors=True)
