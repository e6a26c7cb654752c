"""Ingestion: read a source, fetch remote images, verify every image, upsert into the workspace.

    reader (folder | table | nft | urls) -> RawRecords
      -> download remote images (cache in the workspace)
      -> verify each image in parallel, in threads or Ray tasks (open, full decode, pixel cap, sha256)
      -> reject duplicate ids -> Items -> Workspace.add_items -> IngestReport
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curata import objectstore
from curata.collection import Collection, Item, items_to_frame
from curata.imageio import DEFAULT_MAX_PIXELS, ImageError, verify_image
from curata.ingest.download import DownloadPolicy, download_all
from curata.ingest.folder import looks_like_image, read_image_folder
from curata.ingest.nft import collection_folders, find_metadata_dir, read_nft_metadata
from curata.ingest.records import RawRecord, SourceError
from curata.ingest.report import Entry, IngestReport
from curata.ingest.table import TABLE_SUFFIXES, ColumnMap, read_table
from curata.ingest.urls import URL_LIST_SUFFIXES, read_url_list
from curata.paths import cache_dir
from curata.progress import SILENT, Reporter
from curata.storage import is_remote
from curata.workspace import Workspace

FORMATS = ("auto", "folder", "table", "nft", "urls")
# Records verified and committed at a time: what the process holds does not grow with the source (about 4 KB a
# record while its part is in flight), and a killed run keeps the parts committed.
INGEST_WINDOW = 10_000
TABLE_NAMES = ("labels.csv", "metadata.csv", "items.csv", "labels.tsv", "items.parquet", "items.jsonl")


@dataclass
class IngestOptions:
    format: str = "auto"
    source_name: str | None = None  # prefix of item ids; default: the source's folder/file name
    collection: str | None = None  # collection of every item; default: an NFT token's own, else the source name
    columns: ColumnMap = field(default_factory=ColumnMap)
    label_trait: str | None = None  # NFT: use this trait's value as the item label
    labels_from_subfolders: bool | None = None  # image folder: default auto
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = 256 * 1024 * 1024
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    workers: int = max(2, (os.cpu_count() or 2) * 2)  # decoding releases the GIL; threads overlap I/O
    engine: str = "local"  # "ray": images verified in Ray tasks (curata.scale.ray_ingest)
    ray_address: str | None = None  # with engine "ray": the cluster; default a local runtime
    ray_cpus: int | None = None  # with engine "ray" and no address: the local runtime's CPUs


def detect_format(source: Path) -> str:
    """Guess the source format from what is on disk."""
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return "table"
        if suffix in URL_LIST_SUFFIXES:
            return "urls"
        if suffix == ".json":
            return "nft"
        raise SourceError(f"cannot tell the format of {source.name}; pass --format")
    if not source.is_dir():
        raise SourceError(f"source not found: {source}")
    if _table_in(source) is not None:
        return "table"
    if (source / "metadata").is_dir() and find_metadata_dir(source) is not None:
        return "nft"
    # Any image type counts here, not only png/jpg: a folder of .webp or .jpeg files with a stray
    # JSON file beside them is an image folder.
    if any(source.glob("*.json")) and not any(p.is_file() and looks_like_image(p) for p in source.iterdir()):
        return "nft"
    # Sub-folders that are each a collection (`apes/metadata/*.json`, `punks/metadata/*.json`): one NFT
    # source of several collections, not an image folder labelled by sub-folder.
    if not any(p.is_file() and looks_like_image(p) for p in source.iterdir()) and collection_folders(source):
        return "nft"
    return "folder"


def _table_in(folder: Path) -> Path | None:
    for name in TABLE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_records(source: Path, fmt: str, options: IngestOptions) -> Iterable[RawRecord]:
    if fmt == "folder":
        return read_image_folder(source, labels_from_subfolders=options.labels_from_subfolders)
    if fmt == "table":
        path = _table_in(source) if source.is_dir() else source
        if path is None:
            raise SourceError(f"no table ({', '.join(TABLE_NAMES)}) in {source}")
        return read_table(path, options.columns)
    if fmt == "nft":
        return read_nft_metadata(source, label_trait=options.label_trait)
    if fmt == "urls":
        return read_url_list(source)
    raise SourceError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def default_source_name(source: Path) -> str:
    """The id prefix of a source ingested without --source-name: its folder's name."""
    path = source.resolve()
    name = path.parent.name if path.is_file() and path.parent.name else path.stem
    if path.is_dir():
        name = path.name
    return name or "source"


def _remote(records: list[RawRecord]) -> list[RawRecord]:
    """The records whose image is a URL to download (an object URI is read where it is)."""
    return [r for r in records if r.error is None and r.image and "://" in r.image
            and not objectstore.is_object_uri(r.image)]


def _fetch_remote(remote: list[RawRecord], workspace: Workspace, policy: DownloadPolicy,
                  advance: Callable[[int], Any]) -> None:
    """Replace URL images by cached local files, or set the record's error."""
    if not remote:
        return
    folder = workspace.dir("cache") / "images"
    # Downloads resume from local files; a workspace on object storage then keeps each image as an object
    # (`cache/images/<key>`, one PUT, skipped when there already), so every node reads it from the bucket.
    local = (cache_dir() / "downloads" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
             if is_remote(folder) else folder)
    local.mkdir(parents=True, exist_ok=True)
    results = download_all([r.image for r in remote], local, policy, progress=lambda _result: advance(1))
    stored: dict[Path, Any] = {}
    if is_remote(folder):
        with ThreadPoolExecutor(8) as pool:  # uploads overlap: each is one request's latency
            stored = dict(pool.map(lambda path: (path, _keep_object(path, folder)),
                                   {r.path for r in results if r.status in ("ok", "cached") and r.path is not None}))
    for record, result in zip(remote, results, strict=True):
        record.meta.setdefault("url", record.image)
        if result.status in ("ok", "cached") and result.path is not None:
            record.image = str(stored.get(result.path, result.path))
        else:
            record.error = ("download_failed", result.reason or "download failed")


def _keep_object(path: Path, folder: Any) -> Any:
    """A downloaded image as an object under `folder` (not uploaded again when it is there already)."""
    stored = folder / path.name
    if not stored.is_file():
        stored.write_bytes(path.read_bytes())
    return stored


@dataclass
class CheckedImage:
    """What verifying one image found: its hash and size, or why it was rejected."""

    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    notes: tuple[str, ...] = ()
    error: tuple[str, str] | None = None


def check_image(path: str, max_pixels: int, max_file_bytes: int) -> CheckedImage:
    """Hash and fully verify one image file; never raises for a bad file."""
    try:  # a local file or an object (s3://...: curata.objectstore), read once
        data = objectstore.read_bytes(path, max_bytes=max_file_bytes)
        if not data:
            return CheckedImage(error=("empty_file", "file is empty (0 bytes)"))
    except objectstore.TooLarge as e:
        return CheckedImage(error=("file_too_large",
                                   f"{e.size / 1e6:.1f} MB exceeds the file cap of {max_file_bytes / 1e6:.0f} MB"))
    except FileNotFoundError:
        return CheckedImage(error=("missing_file", f"file not found: {path}"))
    except OSError as e:
        return CheckedImage(error=("unreadable", f"cannot read file: {e}"))
    try:
        info = verify_image(data, max_pixels=max_pixels)
    except ImageError as e:
        return CheckedImage(error=(e.code, e.reason))
    except Exception as e:  # a decoder failure imageio does not know yet must reject one file, not the run
        return CheckedImage(error=("corrupt", f"cannot decode image: {type(e).__name__}: {e}"))
    return CheckedImage(hashlib.sha256(data).hexdigest(), info.width, info.height, info.mode, info.format,
                        info.notes)


def _check_all(records: list[RawRecord], options: IngestOptions, advance: Callable[[int], Any],
               nodes: set[str]) -> list[CheckedImage]:
    """Every record's image checked, in order: in threads here, or in Ray tasks (the nodes that ran them are
    added to `nodes`)."""
    paths = [r.image or "" for r in records]
    if options.engine == "ray":
        from curata.scale.ray_ingest import check_images_ray

        checked, ran_on = check_images_ray(paths, options.max_pixels, options.max_file_bytes,
                                           address=options.ray_address, num_cpus=options.ray_cpus, advance=advance)
        nodes |= ran_on
        return checked
    if options.engine != "local":
        raise ValueError(f"unknown engine '{options.engine}'; choose local or ray")

    def check(path: str) -> CheckedImage:
        result = check_image(path, options.max_pixels, options.max_file_bytes)
        advance(1)
        return result

    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        return list(pool.map(check, paths))


class _SeenIds:
    """The item ids of the parts already ingested, as sorted 64-bit keys (8 bytes an id, not a Python string):
    a duplicate id in a later part is still found. Two different ids share a key with probability ~n^2 / 2^65
    (3e-6 at 10 M ids); such an id would be rejected as a duplicate, by its name in the report."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    @staticmethod
    def _keys(ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                            for i in ids), dtype=np.uint64)

    def seen(self, ids: list[str]) -> np.ndarray:
        """For each id, whether an earlier part had it."""
        keys = self._keys(ids)
        found = np.zeros(len(keys), bool)
        for run in self._runs:
            found |= run[np.minimum(np.searchsorted(run, keys), len(run) - 1)] == keys
        return found

    def add(self, ids: Iterable[str]) -> None:
        keys = np.unique(self._keys(ids))
        if len(keys):  # a part with no accepted record adds no (empty, unsearchable) run
            self._runs.append(keys)
        if len(self._runs) > 8:  # merged now and then: lookups probe every run
            self._runs = [np.unique(np.concatenate(self._runs))]


def _windows(records: Iterable[RawRecord], size: int) -> tuple[Iterator[list[RawRecord]], int | None]:
    """The records in lists of `size`, and how many there are when that is known without reading past the
    first list (a list of records, or a source that fits in one part), else None."""
    if isinstance(records, list):
        return (records[i:i + size] for i in range(0, len(records), size)), len(records)
    it = iter(records)
    first = list(itertools.islice(it, size))
    after = next(it, None)
    if after is None:
        return iter([first]), len(first)
    rest = itertools.chain([after], it)
    return itertools.chain([first], iter(lambda: list(itertools.islice(rest, size)), [])), None


def ingest(source: str | Path, workspace: Workspace, options: IngestOptions | None = None,
           reporter: Reporter = SILENT) -> IngestReport:
    """Ingest one source into the workspace and return the report (also written to reports/)."""
    options = options or IngestOptions()
    started = time.perf_counter()
    source = Path(source)
    fmt = detect_format(source) if options.format == "auto" else options.format
    if fmt not in FORMATS:
        raise SourceError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    source_name = options.source_name or default_source_name(source)
    return ingest_records(read_records(source, fmt, options), workspace, options, reporter, source=str(source),
                          fmt=fmt, source_name=source_name, started=started)


def ingest_records(records: Iterable[RawRecord], workspace: Workspace, options: IngestOptions | None = None,
                   reporter: Reporter = SILENT, *, source: str, fmt: str, source_name: str | None = None,
                   started: float | None = None) -> IngestReport:
    """Ingest records (a reader's stream, or records built in memory: the collectors' hook): download, verify,
    upsert, report, INGEST_WINDOW records at a time.

    Each part is one commit, so what the process holds does not grow with the source, and a run killed midway
    keeps the parts it committed (running it again finds them unchanged). A source of up to INGEST_WINDOW
    records is one commit, as before. ``source`` and ``fmt`` are what the report names; ids are
    ``<source_name>/<local id>``, with ``source_name`` defaulting to ``options.source_name``.
    """
    options = options or IngestOptions()
    started = time.perf_counter() if started is None else started
    source_name = source_name or options.source_name
    if not source_name:
        raise ValueError("ingest_records needs a source name (the prefix of item ids)")
    if options.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine '{options.engine}'; choose local or ray")
    report = IngestReport(source=source, format=fmt, engine=options.engine)
    windows, total = _windows(records, INGEST_WINDOW)
    progress = _Progress(reporter, f"verifying {source_name}", total)
    part = _Part(options, source_name, report, _SeenIds())
    if options.engine == "ray":  # one runtime for every part (started by the first part's checks)
        from curata.scale.runtime import ray_runtime

        runtime: Any = ray_runtime(options.ray_address, options.ray_cpus, lazy=True)
    else:
        runtime = contextlib.nullcontext()
    nodes: set[str] = set()
    collections: Counter[str] = Counter()
    # A source new to the collection (no id with its prefix) needs no probe of its ids while only this run
    # commits: ids are "<source>/...", and a part's ids are new to the parts before (`_SeenIds`).
    new_at = None if total is not None and total <= INGEST_WINDOW else _new_source_version(workspace, source_name)
    with runtime:
        for window in windows:
            remote = _remote(window)
            _fetch_remote(remote, workspace, options.download, progress.downloads(len(remote)))
            items = part.build(window, _checked(window, options, progress.verify, nodes))
            collections.update(item.collection for item in items)
            upsert = workspace.upsert_items(items_to_frame(items), f"ingest {source_name}", new_ids_at=new_at)
            if upsert.version is not None:  # None once another commit came between: probed from then on
                new_at = upsert.new_ids_at
            report.added += upsert.added
            report.updated += upsert.updated
            report.unchanged += upsert.unchanged
            report.kept_edits += upsert.kept_edits
            report.commits += upsert.version is not None
            del window, remote, items
    report.nodes = len(nodes)
    report.collections = dict(collections.most_common())
    report.seconds = time.perf_counter() - started
    workspace.write_report("ingest", report.to_dict())
    return report


def _new_source_version(workspace: Workspace, source_name: str) -> int | None:
    """The collection's version when it holds no item of this source (None: it does, or the check failed)."""
    from curata.collection import CollectionError

    table = Collection(workspace.root)
    try:
        version = table.version
        return None if table.has_id_prefix(f"{source_name}/") else version
    except (CollectionError, OSError):
        return None  # the upsert reports a damaged table itself


def _checked(window: list[RawRecord], options: IngestOptions, advance: Callable[[int], Any],
             nodes: set[str]) -> dict[int, CheckedImage]:
    """The check of each record of a part that has an image to check, by `id(record)`; records without one get
    their error here."""
    to_check = [r for r in window if r.error is None and r.skip is None and r.image]
    for r in window:
        if r.error is None and r.skip is None and not r.image:
            r.error = ("missing_image", "no image for this record")
    checked = dict(zip(map(id, to_check), _check_all(to_check, options, advance, nodes), strict=True))
    advance(len(window) - len(to_check))
    return checked


class _Progress:
    """The run's bars, made once for all its parts: verifying (with the total when it is known) and downloading
    (made by the first part with URLs; its total is known when that part is the whole source)."""

    def __init__(self, reporter: Reporter, description: str, total: int | None):
        self.reporter = reporter
        self.one_part = total is not None and total <= INGEST_WINDOW
        self.verify = reporter.task(description, total)
        self._downloads: Callable[[int], Any] | None = None

    def downloads(self, count: int) -> Callable[[int], Any]:
        if count and self._downloads is None:
            self._downloads = self.reporter.task("downloading images", count if self.one_part else None)
        return self._downloads or (lambda _n: None)


@dataclass
class _Part:
    """Turns one part's records and checks into items and report entries. Holds what must carry over from one
    part to the next: the ids seen (duplicates), and whether the source has text at all."""

    options: IngestOptions
    source_name: str
    report: IngestReport
    seen: _SeenIds
    image_only: bool | None = None  # decided by the first part with items: an image-only source

    def build(self, window: list[RawRecord], checked: dict[int, CheckedImage]) -> list[Item]:
        items: list[Item] = []
        entries: list[Entry] = []
        without_text: list[Entry] = []
        first_seen: dict[str, str] = {}
        ids = [f"{self.source_name}/{record.local_id}" for record in window]
        earlier = self.seen.seen(ids)  # one pass over the part, not a lookup per record
        for record, item_id, in_earlier_part in zip(window, ids, earlier, strict=True):
            if record.skip is not None:  # not an item, but never dropped without a line in the report
                entries.append(Entry(record.ref, item_id, "skipped", *record.skip))
                continue
            result = checked.get(id(record))
            error = record.error or (result.error if result else None)
            if error is None and item_id in first_seen:
                error = ("duplicate_id", f"id '{record.local_id}' already used by {first_seen[item_id]}")
            elif error is None and in_earlier_part:
                error = ("duplicate_id", f"id '{record.local_id}' already used by an earlier record of the source")
            if error is not None:
                entries.append(Entry(record.ref, item_id, "error", error[0], error[1], record.notes))
                continue
            assert result is not None
            first_seen[item_id] = record.ref
            entry = Entry(record.ref, item_id, "ok", "ok", "", [*record.notes, *result.notes])
            entries.append(entry)
            if not record.text:
                without_text.append(entry)
            items.append(Item(
                id=item_id, source=self.source_name,
                collection=self.options.collection or record.collection or self.source_name,
                image=record.image if objectstore.is_object_uri(record.image) else os.path.abspath(record.image or ""),
                image_sha256=result.sha256,
                width=result.width, height=result.height, image_mode=result.mode, image_format=result.format,
                text=record.text, captions=record.captions, label=record.label, tags=record.tags,
                attributes=record.attributes, split=record.split, meta=record.meta,
            ))
        if self.image_only is None and items:
            # An image-only source (its first part with items has no text): "empty text" on every item says
            # nothing the source does not. Kept where only some items lack a text, which is worth a look.
            self.image_only = not any(item.text for item in items)
        if not self.image_only:
            for entry in without_text:
                entry.notes.append("empty text")
        for entry in entries:
            self.report.add(entry)
        self.seen.add(first_seen)
        return items
