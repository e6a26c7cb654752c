"""Images on object storage: `s3://bucket/key` (and the other URIs pyarrow's filesystems read: `gs://`,
`abfs://`, `hdfs://`) stored in the collection as they are and read wherever an image is read, so Ray workers
on any node load them without a shared filesystem.

Credentials, region and endpoint come from the environment, as the cloud's own tools read them
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` or `AWS_PROFILE`, `AWS_REGION`,
`AWS_ENDPOINT_URL` for an S3-compatible server such as MinIO; `GOOGLE_APPLICATION_CREDENTIALS`), never from
curata's options or files, so they never reach a report, a card or an error message. A local Ray runtime's
workers inherit them; on a cluster each node needs them in its environment.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://")

_filesystems: dict[str, Any] = {}  # one client per bucket and process: opening one resolves the region
_lock = threading.Lock()


def is_object_uri(ref: object) -> bool:
    """Whether `ref` names an object on object storage (not a local path, not an http URL)."""
    return isinstance(ref, str) and ref.lower().startswith(SCHEMES)


def _resolve(uri: str) -> tuple[Any, str]:
    """The filesystem of the URI's bucket (created once per process) and the object's path within it."""
    from pyarrow import fs

    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise FileNotFoundError(f"not an object URI with a bucket and a key: {uri}")
    root = f"{scheme.lower()}://{bucket}"
    with _lock:
        filesystem = _filesystems.get(root)
        if filesystem is None:
            try:
                filesystem, _ = fs.FileSystem.from_uri(root)
            except Exception as e:  # pyarrow's messages name the bucket and the reason, never a secret
                raise OSError(f"cannot reach {root}: {e}") from e
            _filesystems[root] = filesystem
    return filesystem, f"{bucket}/{key}"


def size(ref: str | Path) -> int:
    """The size in bytes of a local file or an object; FileNotFoundError when there is none."""
    if not is_object_uri(ref):
        return os.path.getsize(ref)
    from pyarrow import fs

    filesystem, path = _resolve(str(ref))
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.File:
        raise FileNotFoundError(f"object not found: {ref}")
    return int(info.size)


def exists(ref: str | Path) -> bool:
    """Whether a local file or an object is there (one HEAD request for an object; False when unreachable)."""
    try:
        size(ref)
    except OSError:
        return False
    return True


class TooLarge(OSError):
    """The file or object is larger than the reader's cap (`size`: its size in bytes); nothing was read."""

    def __init__(self, ref: str | Path, size: int):
        super().__init__(f"{ref} is {size} bytes")
        self.size = size


def read_bytes(ref: str | Path, max_bytes: int | None = None) -> bytes:
    """The whole content of a local file or an object, unless it is larger than `max_bytes` (TooLarge, before
    reading it). FileNotFoundError when there is none, OSError when it cannot be read; both name the file or URI.
    An object is opened once: its size and its bytes come from the same open (a HEAD and a GET)."""
    if not is_object_uri(ref):
        if max_bytes is not None and (found := os.path.getsize(ref)) > max_bytes:
            raise TooLarge(ref, found)
        return Path(ref).read_bytes()
    filesystem, path = _resolve(str(ref))
    try:
        with filesystem.open_input_file(path) as stream:
            if max_bytes is not None and (found := stream.size()) > max_bytes:
                raise TooLarge(ref, found)
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"object not found: {ref}") from None
    except TooLarge:
        raise
    except OSError as e:
        raise OSError(f"cannot read {ref}: {e}") from e
