"""Ingestion: read a source, fetch remote images, verify every image, upsert into the workspace.

    reader (folder | table | nft | urls) -> RawRecords
      -> download remote images (cache in the workspace)
      -> verify each image in parallel, in threads or Ray tasks (open, full decode, pixel cap, sha256)
      -> reject duplicate ids -> Items -> Workspace.add_items -> IngestReport
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curata import objectstore
from curata.collection import Item, items_to_frame
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


def _fetch_remote(records: list[RawRecord], workspace: Workspace, policy: DownloadPolicy,
                  reporter: Reporter) -> None:
    """Replace URL images by cached local files, or set the record's error."""
    remote = [r for r in records if r.error is None and r.image and "://" in r.image
              and not objectstore.is_object_uri(r.image)]
    if not remote:
        return
    advance = reporter.task("downloading images", len(remote))
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
               report: IngestReport) -> list[CheckedImage]:
    """Every record's image checked, in order: in threads here, or in Ray tasks (`report.nodes` says how many
    nodes ran them)."""
    paths = [r.image or "" for r in records]
    if options.engine == "ray":
        from curata.scale.ray_ingest import check_images_ray

        checked, report.nodes = check_images_ray(paths, options.max_pixels, options.max_file_bytes,
                                                 address=options.ray_address, num_cpus=options.ray_cpus,
                                                 advance=advance)
        return checked
    if options.engine != "local":
        raise ValueError(f"unknown engine '{options.engine}'; choose local or ray")

    def check(path: str) -> CheckedImage:
        result = check_image(path, options.max_pixels, options.max_file_bytes)
        advance(1)
        return result

    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        return list(pool.map(check, paths))


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
    records = list(read_records(source, fmt, options))
    return ingest_records(records, workspace, options, reporter, source=str(source), fmt=fmt,
                          source_name=source_name, started=started)


def ingest_records(records: list[RawRecord], workspace: Workspace, options: IngestOptions | None = None,
                   reporter: Reporter = SILENT, *, source: str, fmt: str, source_name: str | None = None,
                   started: float | None = None) -> IngestReport:
    """Ingest records built in memory (the collectors' hook): download, verify, upsert, report.

    ``source`` and ``fmt`` are what the report names; ids are ``<source_name>/<local id>``, with
    ``source_name`` defaulting to ``options.source_name``.
    """
    options = options or IngestOptions()
    started = time.perf_counter() if started is None else started
    source_name = source_name or options.source_name
    if not source_name:
        raise ValueError("ingest_records needs a source name (the prefix of item ids)")
    _fetch_remote(records, workspace, options.download, reporter)

    advance = reporter.task(f"verifying {source_name}", len(records))
    to_check = [r for r in records if r.error is None and r.skip is None and r.image]
    for r in records:
        if r.error is None and r.skip is None and not r.image:
            r.error = ("missing_image", "no image for this record")

    report = IngestReport(source=source, format=fmt, engine=options.engine)
    checked = dict(zip(map(id, to_check), _check_all(to_check, options, advance, report), strict=True))
    advance(len(records) - len(to_check))

    items: list[Item] = []
    first_seen: dict[str, str] = {}
    for record in records:
        item_id = f"{source_name}/{record.local_id}"
        if record.skip is not None:  # not an item, but never dropped without a line in the report
            report.entries.append(Entry(record.ref, item_id, "skipped", *record.skip))
            continue
        result = checked.get(id(record))
        error = record.error or (result.error if result else None)
        if error is None and item_id in first_seen:
            error = ("duplicate_id", f"id '{record.local_id}' already used by {first_seen[item_id]}")
        if error is not None:
            report.entries.append(Entry(record.ref, item_id, "error", error[0], error[1], record.notes))
            continue
        assert result is not None
        first_seen[item_id] = record.ref
        notes = [*record.notes, *result.notes]
        if not record.text:
            notes.append("empty text")
        report.entries.append(Entry(record.ref, item_id, "ok", "ok", "", notes))
        items.append(Item(
            id=item_id, source=source_name,
            collection=options.collection or record.collection or source_name,
            image=record.image if objectstore.is_object_uri(record.image) else os.path.abspath(record.image or ""),
            image_sha256=result.sha256,
            width=result.width, height=result.height, image_mode=result.mode, image_format=result.format,
            text=record.text, captions=record.captions, label=record.label, tags=record.tags,
            attributes=record.attributes, split=record.split, meta=record.meta,
        ))
    if items and not any(item.text for item in items):
        # An image-only source: "empty text" on every item says nothing the source does not (kept where only
        # some items lack a text, which is worth a look).
        for entry in report.entries:
            if "empty text" in entry.notes:
                entry.notes = [n for n in entry.notes if n != "empty text"]
    report.collections = dict(Counter(item.collection for item in items).most_common())
    upsert = workspace.upsert_items(items_to_frame(items), f"ingest {source_name}")
    report.added, report.updated, report.unchanged = upsert.added, upsert.updated, upsert.unchanged
    report.kept_edits = upsert.kept_edits
    report.seconds = time.perf_counter() - started
    workspace.write_report("ingest", report.to_dict())
    return report
