"""Concurrent, resumable HTTP downloads for `curata ingest` and the metadata collectors.

Design notes (the why):

* Real collections are messy: dead IPFS gateways, rate limits, HTML error pages served as image/png,
  multi-hundred-megabyte "images". Every failure therefore becomes a per-URL result with a precise
  reason; one bad URL never aborts a run.
* The cache is keyed by the sha256 of the URL *as given*, so a rerun knows what is finished without a
  single request. A file only gets its final name once it is complete (``.part`` + atomic rename), and
  the sidecar ``<key>.json`` is written last: it is the commit marker of a finished download.
* An interrupted transfer leaves ``<key>.part`` behind; the next attempt (a retry, or the next run)
  asks for the rest with ``Range``. ``If-Range`` with the validator saved at the start of the transfer
  protects against stitching two versions of a changed resource together.
* The body is sniffed (magic bytes), not just the Content-Type header, because gateways and CDNs
  routinely lie in both directions.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import mimetypes
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = [
    "DownloadError",
    "DownloadPolicy",
    "DownloadResult",
    "download_all",
    "fetch_json",
    "resolve_url",
    "url_key",
]

_SNIFF_LEN = 1024  # enough to see past an XML prolog / doctype to the <svg root
_RETRYABLE_STATUS = frozenset({408, 429})
_RETRY_AFTER_STATUS = frozenset({429, 503})


@dataclass(frozen=True)
class DownloadResult:
    """The outcome for one URL. ``n_bytes`` is the size of the cached file (0 on error)."""

    url: str
    path: Path | None
    status: str  # "ok" | "cached" | "error"
    reason: str | None
    content_type: str | None
    n_bytes: int


@dataclass(frozen=True)
class DownloadPolicy:
    concurrency: int = 8
    retries: int = 3  # extra attempts on retryable failures (connect errors, timeouts, 429, 5xx, truncation)
    timeout: float = 20.0  # seconds, applied to connect and to each read
    backoff: float = 0.5  # base of exponential backoff with full jitter
    max_wait: float = 30.0  # cap on any single wait, Retry-After included
    max_bytes: int = 50 * 1024 * 1024
    accept: tuple[str, ...] = ("image/",)  # content-type prefixes accepted (checked on the sniffed body)
    ipfs_gateways: tuple[str, ...] = ("https://ipfs.io/ipfs/",)  # tried in order
    user_agent: str = "curata/0.1"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.timeout <= 0 or self.max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")
        if self.backoff < 0 or self.max_wait < 0:
            raise ValueError("backoff and max_wait must be >= 0")


class DownloadError(Exception):
    """A fetch that failed for good; ``reason`` is meant for humans and logs."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


# --------------------------------------------------------------------------------------------- URLs


def resolve_url(url: str, gateways: Sequence[str]) -> list[str]:
    """The HTTP URLs to try for ``url``, in order.

    ``ipfs://CID/path`` and ``ipfs://ipfs/CID/path`` give one URL per gateway; ``http(s)`` URLs are
    returned unchanged; anything else raises ``ValueError``.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"invalid URL {url!r}: no host")
        return [url.strip()]
    if scheme == "ipfs":
        # netloc, not hostname: CIDv0 ("Qm...") is case-sensitive and hostname lowercases.
        rest = (parts.netloc + parts.path).lstrip("/")
        if rest.startswith("ipfs/"):
            rest = rest[len("ipfs/") :]
        if not rest or rest.startswith("/") or any(c.isspace() for c in rest):
            raise ValueError(f"invalid IPFS URL {url!r}: no CID")
        if parts.query:
            rest += "?" + parts.query
        if not gateways:
            raise ValueError("no IPFS gateway configured")
        return [(g if g.endswith("/") else g + "/") + rest for g in gateways]
    if not scheme:
        raise ValueError(f"not a URL (no scheme): {url!r}")
    raise ValueError(f"unsupported URL scheme {scheme!r}")


def url_key(url: str) -> str:
    """Cache key of a URL: sha256 of the URL exactly as given."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------- content checks

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/jxl": ".jxl",
    "image/svg+xml": ".svg",
    "image/x-icon": ".ico",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "model/gltf-binary": ".glb",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "text/html": ".html",
}

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "image/jxl"),
    (b"\xff\x0a", "image/jxl"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"BM", "image/bmp"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"glTF", "model/gltf-binary"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
)
_HEIF_BRANDS = {b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif", b"msf1": "image/heif"}
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<title", b"<meta", b"<div")


def _sniff(head: bytes) -> str | None:
    """Media type recognised from the first bytes of a body, or None."""
    if head[4:8] == b"ftyp":  # ISO base media: AVIF/HEIF stills vs MP4/MOV video
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in _HEIF_BRANDS:
            return _HEIF_BRANDS[brand]
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<"):
        # SVG first: it may open with an XML prolog, a comment or a doctype before the <svg root.
        if b"<svg" in text and b"<html" not in text:
            return "image/svg+xml"
        if text.startswith(_HTML_STARTS):
            return "text/html"
        if text.startswith(b"<?xml"):
            return "application/xml"
    if text[:1] in (b"{", b"["):
        return "application/json"
    return None


def _media_type(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return value[:100] or None


def _accepted(media_type: str, accept: Sequence[str]) -> bool:
    return any(media_type.startswith(prefix) for prefix in accept)


def _judge(head: bytes, served_as: str | None, accept: Sequence[str]) -> str:
    """The content type to record, or a non-retryable failure. The body wins over the header."""
    wanted = "an image" if tuple(accept) == ("image/",) else f"accepted ({', '.join(accept)})"
    sniffed = _sniff(head)
    if sniffed is not None:
        if _accepted(sniffed, accept):
            return sniffed
        served = f" (served as {served_as})" if served_as and served_as != sniffed else ""
        raise _Fail(f"content type {sniffed} is not {wanted}{served}", drop_part=True)
    if served_as and _accepted(served_as, accept):
        return served_as  # a format we do not sniff (rare), trust the server
    raise _Fail(
        f"content type {served_as or '(none)'} is not {wanted} and the body is not a recognised format",
        drop_part=True,
    )


def _extension(media_type: str) -> str:
    ext = _EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type) or ".bin"
    return ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else ".bin"


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        if n < scale * 1024 or unit == "GB":
            return f"{n / scale:.1f} {unit}"
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ retry machinery


class _Fail(Exception):
    """One failed attempt.

    retryable: worth another attempt at the same URL later. final: no other URL (gateway) will do
    better either (size cap, cancellation). drop_part: the partial file is useless, delete it.
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool = False,
        final: bool = False,
        drop_part: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.final = final
        self.drop_part = drop_part
        self.retry_after = retry_after


class _Restart(Exception):
    """The partial file cannot be resumed against this response; start the transfer over."""


class _Transfer:
    """Byte counts of the attempt in flight, so a dropped connection can be reported precisely."""

    def __init__(self) -> None:
        self.got = 0
        self.total: int | None = None


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _status_fail(response: httpx.Response) -> _Fail:
    code = response.status_code
    phrase = response.reason_phrase
    if not phrase:  # HTTP/2 carries no reason phrase
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
    reason = f"HTTP {code} {phrase}".rstrip()
    retryable = code in _RETRYABLE_STATUS or 500 <= code <= 599
    retry_after = _retry_after_seconds(response.headers.get("retry-after")) if code in _RETRY_AFTER_STATUS else None
    return _Fail(reason, retryable=retryable, retry_after=retry_after)


def _translate(exc: Exception, transfer: _Transfer) -> _Fail:
    """Map an httpx exception to an attempt failure with a precise, human reason."""
    if isinstance(exc, httpx.TimeoutException):
        return _Fail("timed out", retryable=True)
    if isinstance(exc, httpx.RemoteProtocolError) and transfer.total is not None and transfer.got < transfer.total:
        return _Fail(f"truncated body: got {transfer.got} of {transfer.total} bytes", retryable=True)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.TooManyRedirects | httpx.InvalidURL):
        return _Fail(f"invalid URL or redirect: {exc}")
    if isinstance(exc, httpx.DecodingError):
        return _Fail(f"undecodable body: {exc}", drop_part=True)
    if isinstance(exc, httpx.ConnectError):
        return _Fail(f"connection failed ({exc})", retryable=True)
    if isinstance(exc, httpx.TransportError):
        return _Fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, retryable=True)
    return _Fail(f"{type(exc).__name__}: {exc}")


def _with_retries(
    candidates: Sequence[str],
    policy: DownloadPolicy,
    stop: threading.Event,
    attempt: Callable[[str, _Transfer], Any],
) -> Any:
    """Run ``attempt`` over the candidate URLs with retries; return its value or raise a final _Fail.

    Each round tries every still-viable candidate in order, so a dead first gateway costs one failed
    connection per round rather than a full retry budget before the fallback is tried.
    """
    alive = list(candidates)
    last: dict[str, str] = {}
    n_attempts = 0
    for round_no in range(policy.retries + 1):
        waits: list[float] = []
        for url in list(alive):
            if stop.is_set():
                raise _Fail("cancelled", final=True)
            n_attempts += 1
            transfer = _Transfer()
            try:
                try:
                    return attempt(url, transfer)
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    raise _translate(exc, transfer) from exc
            except _Fail as fail:
                last[url] = fail.reason
                if fail.final:
                    raise
                if not fail.retryable:
                    alive.remove(url)
                elif fail.retry_after is not None:
                    waits.append(fail.retry_after)
        if not alive or round_no == policy.retries:
            break
        if waits:
            delay = min(max(waits), policy.max_wait)
        else:  # exponential backoff with full jitter, so many workers do not retry in lockstep
            delay = random.uniform(0, min(policy.max_wait, policy.backoff * 2**round_no))
        if stop.wait(delay):
            raise _Fail("cancelled", final=True)
    if len(candidates) == 1:
        reason = last[candidates[0]]
    else:
        reason = "; ".join(f"{urlsplit(u).netloc}: {r}" for u, r in last.items())
    if n_attempts > 1:
        reason += f" after {n_attempts} attempts"
    raise _Fail(reason)


def _make_client(policy: DownloadPolicy) -> httpx.Client:
    # One client shared by all workers: httpcore's pool is thread-safe and reuses connections per host.
    limits = httpx.Limits(max_connections=policy.concurrency, max_keepalive_connections=policy.concurrency)
    return httpx.Client(
        headers={"User-Agent": policy.user_agent},
        timeout=httpx.Timeout(policy.timeout),
        follow_redirects=True,
        limits=limits,
    )


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, complete length or None) from ``Content-Range: bytes a-b/len``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _is_encoded(response: httpx.Response) -> bool:
    return response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")


# ------------------------------------------------------------------------------------ file downloads


class _Files:
    """The cache files of one URL."""

    def __init__(self, cache_dir: Path, url: str):
        self.key = url_key(url)
        self.dir = cache_dir
        self.part = cache_dir / f"{self.key}.part"
        self.part_info = cache_dir / f"{self.key}.part.json"  # validators for If-Range
        self.sidecar = cache_dir / f"{self.key}.json"

    def discard_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.part_info.unlink(missing_ok=True)

    def part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def read_part_info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.part_info.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(_SNIFF_LEN)


def _fetch_to_part(
    client: httpx.Client,
    url: str,
    files: _Files,
    policy: DownloadPolicy,
    stop: threading.Event,
    transfer: _Transfer,
) -> str:
    """One attempt: stream ``url`` into the .part file (resuming it if possible); return the content type."""
    offset = files.part_size()
    if offset > policy.max_bytes:
        files.discard_part()
        offset = 0
    # identity: Range offsets and Content-Length must refer to the bytes we store.
    headers = {"Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        info = files.read_part_info()
        validator = info.get("etag") or info.get("last_modified")
        if isinstance(validator, str):
            headers["If-Range"] = validator

    with client.stream("GET", url, headers=headers, timeout=policy.timeout, follow_redirects=True) as response:
        code = response.status_code
        if code == 416 and offset:
            raise _Restart  # the resource is shorter than our partial file: it changed
        if code not in (200, 203, 206):  # 203: a transforming proxy's 200
            raise _status_fail(response)
        served_as = _media_type(response)
        if code == 206:
            content_range = _content_range(response.headers.get("content-range"))
            if not offset or content_range is None or content_range[0] != offset or _is_encoded(response):
                raise _Restart
            total = content_range[1]
            expected = files.read_part_info().get("total")
            if isinstance(expected, int) and total is not None and total != expected:
                raise _Restart  # same offset, different resource
            mode = "ab"
        else:  # 200: a fresh transfer (the server ignored our Range, or there was none)
            offset = 0
            mode = "wb"
            total = None if _is_encoded(response) else _content_length(response)
            etag = response.headers.get("etag")
            strong_etag = etag if etag and not etag.startswith("W/") else None  # If-Range needs a strong one
            _write_json_atomic(
                files.part_info,
                {
                    "url": url,
                    "etag": strong_etag,
                    "last_modified": response.headers.get("last-modified"),
                    "total": total,
                },
            )
        transfer.got, transfer.total = offset, total
        cap = policy.max_bytes
        if total is not None and total > cap:
            raise _Fail(
                f"Content-Length {_human_size(total)} exceeds size cap of {_human_size(cap)}",
                final=True,
                drop_part=True,
            )

        head = _read_head(files.part) if offset else b""
        content_type = _judge(head, served_as, policy.accept) if len(head) >= _SNIFF_LEN else None
        with files.part.open(mode) as out:
            # No chunk_size: httpx would buffer up to it and lose those bytes if the connection drops.
            for chunk in response.iter_bytes():
                if stop.is_set():
                    raise _Fail("cancelled", final=True)
                transfer.got += len(chunk)
                if transfer.got > cap:
                    raise _Fail(f"body exceeds size cap of {_human_size(cap)}", final=True, drop_part=True)
                if content_type is None and len(head) < _SNIFF_LEN:
                    head += chunk[: _SNIFF_LEN - len(head)]
                    if len(head) >= _SNIFF_LEN:  # decide early: do not stream 50 MB of an HTML page
                        content_type = _judge(head, served_as, policy.accept)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    if total is not None and transfer.got < total:
        raise _Fail(f"truncated body: got {transfer.got} of {total} bytes", retryable=True)
    if transfer.got == 0:
        raise _Fail("empty body", drop_part=True)
    return content_type or _judge(head, served_as, policy.accept)


def _cached_result(files: _Files, url: str) -> DownloadResult | None:
    """The finished download recorded by the sidecar, or None (missing, foreign, or inconsistent)."""
    try:
        info = json.loads(files.sidecar.read_text())
        name = info["file"]
        if info["url"] != url or not isinstance(name, str) or Path(name).name != name:
            return None
        path = files.dir / name
        size = path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if size != info.get("n_bytes"):
        return None
    return DownloadResult(url, path, "cached", None, info.get("content_type"), size)


def _download_one(
    client: httpx.Client, url: str, cache_dir: Path, policy: DownloadPolicy, stop: threading.Event
) -> DownloadResult:
    def error(reason: str) -> DownloadResult:
        return DownloadResult(url, None, "error", reason, None, 0)

    try:
        files = _Files(cache_dir, url)
        cached = _cached_result(files, url)
        if cached is not None:
            return cached
        try:
            candidates = resolve_url(url, policy.ipfs_gateways)
        except ValueError as exc:
            return error(str(exc))

        def attempt(candidate: str, transfer: _Transfer) -> str:
            try:
                try:
                    return _fetch_to_part(client, candidate, files, policy, stop, transfer)
                except _Restart:
                    # Our partial file does not fit this resource: drop it and start over (at most once).
                    files.discard_part()
                    return _fetch_to_part(client, candidate, files, policy, stop, transfer)
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    raise _translate(exc, transfer) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # raised by the restarted transfer
                fail = _translate(exc, transfer)
                if fail.drop_part:
                    files.discard_part()
                raise fail from exc
            except _Fail as fail:
                if fail.drop_part:
                    files.discard_part()
                raise
            except _Restart:
                files.discard_part()
                raise _Fail("server sent a partial response that does not match the request", retryable=True) from None

        try:
            content_type = _with_retries(candidates, policy, stop, attempt)
        except _Fail as fail:
            return error(fail.reason)

        final = cache_dir / f"{files.key}{_extension(content_type)}"
        os.replace(files.part, final)
        n_bytes = final.stat().st_size
        # The sidecar is written last: it marks the download as finished for later runs.
        _write_json_atomic(
            files.sidecar, {"url": url, "file": final.name, "content_type": content_type, "n_bytes": n_bytes}
        )
        files.part_info.unlink(missing_ok=True)
        return DownloadResult(url, final, "ok", None, content_type, n_bytes)
    except Exception as exc:  # disk full, permissions...: still one bad URL, not a crashed run
        return error(f"unexpected {type(exc).__name__}: {exc}")


def download_all(
    urls: Sequence[str],
    cache_dir: Path,
    policy: DownloadPolicy = DownloadPolicy(),
    progress: Callable[[DownloadResult], None] | None = None,
) -> list[DownloadResult]:
    """Download ``urls`` into ``cache_dir``; results in input order. Never raises for a single bad URL.

    Duplicates are fetched once and share a result. ``progress`` is called from the calling thread,
    once per input item, as results arrive (so it needs no locking and a bar of len(urls) completes).
    On KeyboardInterrupt the workers stop at the next chunk, leaving .part files to resume later.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    positions: dict[str, list[int]] = {}
    for i, url in enumerate(urls):
        positions.setdefault(url, []).append(i)
    results: list[DownloadResult | None] = [None] * len(urls)
    if not positions:
        return []

    stop = threading.Event()
    workers = min(policy.concurrency, len(positions))
    with _make_client(policy) as client:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curata-download")
        try:
            futures = [pool.submit(_download_one, client, url, cache_dir, policy, stop) for url in positions]
            for future in as_completed(futures):
                result = future.result()
                for i in positions[result.url]:
                    results[i] = result
                    if progress is not None:
                        progress(result)
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------- JSON


def _fetch_json_once(
    client: httpx.Client,
    url: str,
    policy: DownloadPolicy,
    transfer: _Transfer,
    body: Any = None,
    extra_headers: Mapping[str, str] | None = None,
) -> Any:
    headers = {"Accept": "application/json, */*;q=0.5", **(extra_headers or {})}
    method, content = "GET", None
    if body is not None:  # a JSON POST: GraphQL queries, search APIs
        method, content = "POST", json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    with client.stream(
        method, url, headers=headers, content=content, timeout=policy.timeout, follow_redirects=True
    ) as response:
        if response.status_code not in (200, 203):
            raise _status_fail(response)
        served_as = _media_type(response)
        transfer.total = None if _is_encoded(response) else _content_length(response)
        cap = policy.max_bytes
        if transfer.total is not None and transfer.total > cap:
            raise _Fail(
                f"Content-Length {_human_size(transfer.total)} exceeds size cap of {_human_size(cap)}",
                final=True,
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            transfer.got = len(body)
            if transfer.got > cap:
                raise _Fail(f"body exceeds size cap of {_human_size(cap)}", final=True)
    if transfer.total is not None and transfer.got < transfer.total:
        raise _Fail(f"truncated body: got {transfer.got} of {transfer.total} bytes", retryable=True)
    try:
        return json.loads(bytes(body))  # bytes: json detects UTF-8/16/32 itself
    except (ValueError, UnicodeDecodeError) as exc:
        # Not retried on this URL, but another gateway may serve the real document (not an error page).
        looks = _sniff(bytes(body[:_SNIFF_LEN]))
        hint = f", body looks like {looks}" if looks and looks != "application/json" else ""
        raise _Fail(f"invalid JSON ({exc}; content type {served_as or '(none)'}{hint})") from None


def fetch_json(
    url: str,
    policy: DownloadPolicy = DownloadPolicy(),
    *,
    client: httpx.Client | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """GET and parse a JSON document with the policy's retries, timeout, size cap and IPFS gateways.

    Raises ``DownloadError`` with a precise reason. Pass a long-lived ``client`` when making many
    calls, to reuse connections; the policy's timeout still applies per request. With ``body`` the
    request is a POST of that value as JSON (retried like a GET: meant for read-only queries such as
    GraphQL); ``headers`` are sent with every attempt (API keys).
    """
    try:
        candidates = resolve_url(url, policy.ipfs_gateways)
    except ValueError as exc:
        raise DownloadError(url, str(exc)) from None
    own_client = client is None
    http = _make_client(policy) if client is None else client
    try:
        return _with_retries(
            candidates, policy, threading.Event(), lambda u, t: _fetch_json_once(http, u, policy, t, body, headers)
        )
    except _Fail as fail:
        raise DownloadError(url, fail.reason) from None
    finally:
        if own_client:
            http.close()
