"""What every collector shares: options, the report, the metadata HTTP session, record (de)serialisation,
dotted paths, and the hand-over of records to the ingest pipeline.

A collector has two phases. It first gathers metadata (pages of an API, token JSON), appending each
finished page or item to its journal (`curata.collect.journal`); then it hands the records to
`curata.ingest.pipeline.ingest_records`, which downloads the images (resumable, cached per URL),
verifies them and upserts the items. A run killed in either phase is completed by the next one:
the journal skips the metadata already fetched, the download cache skips the images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from curata.imageio import DEFAULT_MAX_PIXELS
from curata.ingest.download import DownloadError, DownloadPolicy, fetch_json
from curata.ingest.pipeline import IngestOptions, ingest_records
from curata.ingest.records import RawRecord
from curata.ingest.report import IngestReport
from curata.paths import cache_dir
from curata.progress import SILENT, Reporter
from curata.storage import is_remote
from curata.workspace import Workspace

from .journal import Journal, fingerprint_key

__all__ = [
    "CollectOptions",
    "CollectReport",
    "DownloadError",
    "MetadataSession",
    "finish",
    "get_path",
    "open_journal",
    "run_concurrently",
]

T = TypeVar("T")
JSON_MAX_BYTES = 20 * 1024 * 1024  # an API page or a token JSON larger than this is not metadata


@dataclass
class CollectOptions:
    """Options every collector takes. ``download`` governs image downloads and, with ``json_max_bytes``
    as its size cap, the metadata requests too (retries, backoff, Retry-After, timeout, IPFS gateways)."""

    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    concurrency: int = 4  # metadata requests in flight (images use download.concurrency)
    max_items: int | None = None  # stop gathering once this many records are kept; ingest the first N
    json_max_bytes: int = JSON_MAX_BYTES
    source_name: str | None = None  # prefix of item ids; default: the collector's name
    collection: str | None = None  # override the collection name of every item
    refresh: bool = False  # ignore the checkpoint and fetch everything again
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError("max_items must be at least 1")

    def json_policy(self) -> DownloadPolicy:
        return dataclasses.replace(self.download, max_bytes=self.json_max_bytes, accept=("application/json",))


@dataclass
class CollectReport:
    """What one collector run did: metadata phase counts, failures, and the ingest report."""

    collector: str
    source: str
    state_file: str
    resumed: bool = False  # a checkpoint of an earlier run was used
    complete: bool = False  # every page / item of the query is fetched; a rerun makes no metadata request
    requests: int = 0  # metadata HTTP requests made by this run (retries included)
    fetched: int = 0  # pages or token documents fetched by this run
    reused: int = 0  # pages or token documents taken from the checkpoint
    records: int = 0  # records handed to the ingest pipeline
    skipped: dict[str, int] = field(default_factory=dict)  # left out by filters, by reason
    failures: list[dict[str, str]] = field(default_factory=list)  # pages/requests that failed for good
    ingest: IngestReport | None = None

    def fail(self, ref: str, reason: str) -> None:
        self.failures.append({"ref": ref, "reason": reason})

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("ingest", "failures")}
        out["failures"] = len(self.failures)
        if self.ingest is not None:
            out["ingest"] = self.ingest.summary()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "failures": self.failures,
            "entries": [vars(e) for e in self.ingest.entries] if self.ingest else [],
        }


class MetadataSession:
    """A shared HTTP client for metadata requests that counts the requests actually sent."""

    def __init__(self, options: CollectOptions):
        self.policy = options.json_policy()
        self._lock = threading.Lock()
        self.requests = 0
        limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
        self.client = httpx.Client(
            headers={"User-Agent": self.policy.user_agent},
            timeout=httpx.Timeout(self.policy.timeout),
            follow_redirects=True,
            limits=limits,
            event_hooks={"request": [self._counted]},
        )

    def _counted(self, _request: httpx.Request) -> None:
        with self._lock:
            self.requests += 1

    def get_json(self, url: str, *, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """GET (or POST ``body``) and parse JSON, with the policy's retries; raises ``DownloadError``."""
        return fetch_json(url, self.policy, client=self.client, body=body, headers=headers)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> MetadataSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()




def open_journal(workspace: Workspace, collector: str, fingerprint: dict[str, Any]) -> Journal:
    """The journal of this query in ``<workspace>/cache/collect/`` (a workspace on object storage, which cannot
    append: in the local cache, one folder per workspace; a resumed run on another machine starts over)."""
    folder = workspace.dir("cache") / "collect"
    if is_remote(folder):
        folder = cache_dir() / "collect" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
    return Journal(folder / f"{collector}-{fingerprint_key(fingerprint)}.jsonl", fingerprint)


_MISSING = object()


def get_path(data: Any, path: str, default: Any = None) -> Any:
    """Value at a dotted path: ``a.b.0.c`` (digits index lists). ``""`` is the value itself."""
    value = data
    for part in path.split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else _MISSING
        else:
            value = _MISSING
        if value is _MISSING:
            return default
    return value


def is_empty(value: Any) -> bool:
    """Missing for a filter: None, blank text, empty list or object."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict | tuple):
        return len(value) == 0
    return False


def count_reasons(counter: Counter[str], reasons: dict[str, int]) -> None:
    for reason, n in reasons.items():
        counter[reason] += int(n)


def finish(
    report: CollectReport,
    records: list[RawRecord],
    workspace: Workspace,
    options: CollectOptions,
    reporter: Reporter = SILENT,
    *,
    default_source: str,
) -> CollectReport:
    """Hand the records to the ingest pipeline (first ``max_items`` only), and write the collect report."""
    if options.max_items is not None:
        records = records[: options.max_items]
    report.records = len(records)
    ingest_options = IngestOptions(
        source_name=options.source_name or default_source,
        collection=options.collection,
        max_pixels=options.max_pixels,
        max_file_bytes=max(options.download.max_bytes, 1),
        download=options.download,
    )
    report.ingest = ingest_records(
        records, workspace, ingest_options, reporter, source=report.source, fmt=report.collector
    )
    workspace.write_report("collect", report.to_dict())
    return report


def run_concurrently(work: Callable[[T, threading.Event], None], jobs: Sequence[T], workers: int) -> None:
    """Run ``work(job, stop)`` over ``jobs`` in a thread pool. On an exception or Ctrl-C in the caller,
    ``stop`` is set so workers end after the request in flight (whose result is already journaled)."""
    stop = threading.Event()
    if not jobs:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))), thread_name_prefix="curata-collect")
    try:
        for future in [pool.submit(work, job, stop) for job in jobs]:
            future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
