"""Export the collection as others read it: CSV, JSON Lines, Parquet, or a folder of ERC-721 metadata files.

Curated values by default (`label` and `tags` as a curator left them), the source's on request; the curation
columns (source_label, source_tags, curated, excluded, duplicate_of) travel with the tabular formats so a
reader sees what was curated. Excluded and duplicate-marked items are left out unless asked for.

The export streams one pinned version of the collection in record batches (memory bounded by the batch, a
consistent snapshot even while an ingest or an edit commits meanwhile) and writes under a hidden temporary
name beside the target, renamed into place only once complete: a kill leaves no half-written export under
the finished name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from curata import tables
from curata.atomic import sync_dir, sync_file, writer_gone
from curata.collection import ACTIVE, COLUMNS, CURATION_COLUMNS, FIX, TABLE_SCHEMA
from curata.ingest.nft import trait_value
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

FORMATS = ("csv", "jsonl", "parquet", "erc721")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
VALUES = ("curated", "source")
DEFAULT_COLUMNS = ("id", "collection", "label", "tags", "text", "image", "split",
                   "source_label", "source_tags", "curated", "excluded", "duplicate_of")
EXPORTABLE = (*COLUMNS, *CURATION_COLUMNS)
LIST_SEPARATOR = "|"  # CSV has no lists: tags and curated are joined on it
# OWASP CSV injection: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PAGE_ROWS = 8192  # rows per record batch read from the collection
MAX_STEM_BYTES = 150  # ERC-721 file names: room for "-<n>.json" under the usual 255-byte limit
_UNSAFE = re.compile(r"[^\w.-]+")  # \w is Unicode: ids in any script keep their letters


class ExportError(ValueError):
    """An export that cannot start (bad format, target, values or columns): one line, nothing written."""


class EmptyWorkspace(ExportError):
    """The workspace has no collection, or no items in it."""


class TargetExists(ExportError):
    """The target exists and `overwrite` was not given."""


# Public helpers ---------------------------------------------------------------------------------
def infer_format(path: str | Path) -> str | None:
    """The format a path's suffix names (.csv, .jsonl / .ndjson, .parquet); None for anything else. An
    ERC-721 folder has no suffix to tell it by, so it is only ever asked for."""
    return SUFFIXES.get(Path(path).suffix.lower())


def csv_cell(value: Any) -> str:
    """One CSV cell as text, made inert when a spreadsheet would read it as a formula (a leading quote)."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = LIST_SEPARATOR.join("" if v is None else str(v) for v in value)
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def erc721_attributes(stored: str | list[Any] | None, tags: list[str], source_tags: list[str] | None = None,
                      tags_curated: bool = False) -> list[dict[str, Any]]:
    """The item's stored `attributes` merged with its tags: `trait=value` tags become {trait_type, value},
    plain tags {value}. A stored attribute a tag already says is kept as stored (its number type and extra
    keys such as display_type survive). With `tags_curated`, the tag list is the curator's: it replaces the
    stored values of every trait it names, and drops stored attributes whose source tag the curator
    removed; otherwise tags only add what the attributes lack."""
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            stored = []
    attributes = [a for a in stored if isinstance(a, dict)] if isinstance(stored, list) else []
    accepted = list(dict.fromkeys(t for t in tags if t))
    accepted_set = set(accepted)
    by_trait: dict[str, list[str]] = {}
    for tag in accepted:
        trait, _ = _split_tag(tag)
        if trait is not None:
            by_trait.setdefault(trait, []).append(tag)
    replaced = set(by_trait) if tags_curated else set()
    removed = (set(source_tags or []) - accepted_set) if tags_curated else set()
    out: list[dict[str, Any]] = []
    represented: set[str] = set()
    stored_forms = {_tag_form(a) for a in attributes}
    for attr in attributes:
        form, trait = _tag_form(attr), str(attr.get("trait_type") or "")
        if form in accepted_set:
            out.append(attr)
            represented.add(form)
        elif trait in replaced:
            # The curator's values for this trait take the place of the first stored one (trait order kept).
            for tag in by_trait[trait]:
                if tag not in stored_forms and tag not in represented:
                    out.append(_tag_attribute(tag))
                    represented.add(tag)
        elif form not in removed:
            out.append(attr)
    out.extend(_tag_attribute(tag) for tag in accepted if tag not in represented)
    return out


def erc721_file_stem(item_id: str) -> str:
    """A safe file name stem for an item id: letters, digits, `.`, `_`, `-` only, never starting with a dot
    (so never `.`, `..` or hidden), at most MAX_STEM_BYTES bytes; `item` when nothing is left."""
    stem = _UNSAFE.sub("_", item_id).strip("._")
    while len(stem.encode("utf-8")) > MAX_STEM_BYTES:
        stem = stem[:-1]
    return stem.rstrip("._") or "item"


# The export -------------------------------------------------------------------------------------
def export_collection(workspace: Workspace, path: str | Path, fmt: str | None = None, *, values: str = "curated",
                      include_excluded: bool = False, columns: list[str] | None = None, overwrite: bool = False,
                      reporter: Reporter | None = None, page_rows: int = PAGE_ROWS) -> dict[str, Any]:
    """Write the workspace's collection to `path` as `fmt` (csv, jsonl, parquet, erc721; None: from the
    suffix). `values`: "curated" (label and tags as curated) or "source" (the source's). `columns`: the
    tabular formats' columns, in order (default DEFAULT_COLUMNS; any collection or curation column; not for
    erc721). Refuses an existing target unless `overwrite`. Returns what was written: items, left_out
    (excluded or duplicate items not exported), curated_items, the collection version read."""
    path = Path(path)
    fmt = _check_format(fmt, path)
    if values not in VALUES:
        raise ExportError(f"values must be one of {', '.join(VALUES)}, not {values!r}")
    wanted = _check_columns(fmt, columns)
    _check_target(path, fmt, overwrite)
    collection = workspace.collection
    dataset = collection.dataset()
    total = 0 if dataset is None else int(dataset.count_rows())
    if dataset is None or not total:
        raise EmptyWorkspace(f"no items in workspace {workspace.root} to export (run `curata ingest` first)")
    curated_table = "curated" in dataset.schema.names  # a table written before curation has only source values
    where = None if include_excluded or not curated_table else ACTIVE
    selected = total if where is None else int(dataset.count_rows(filter=where))
    read = _read_columns(fmt, wanted, curated_table)
    batches = tables.batches(dataset, collection.path, FIX, columns=read, filter=where, batch_size=page_rows)
    advance = (reporter or SILENT).task(f"exporting {fmt}", selected)
    stats = {"items": 0, "curated_items": 0}

    def rows() -> Iterator[dict[str, Any]]:
        for batch in batches:
            for row in batch.to_pylist():
                item = _normalise(row, values)
                stats["items"] += 1
                stats["curated_items"] += bool(item["curated"])
                yield item
            advance(batch.num_rows)

    _clean_stale(path)
    if fmt == "erc721":
        _publish_folder(path, overwrite, lambda staged: _write_erc721(rows(), staged, values))
    else:
        _publish_file(path, overwrite, lambda staged: WRITERS[fmt](rows(), staged, wanted))
    return {"path": str(path), "format": fmt, "values": values, "items": stats["items"],
            "left_out": total - selected, "curated_items": stats["curated_items"],
            "columns": list(wanted) if fmt != "erc721" else None, "version": int(dataset.version)}


# Checks -----------------------------------------------------------------------------------------
def _check_format(fmt: str | None, path: Path) -> str:
    if fmt is None:
        inferred = infer_format(path)
        if inferred is None:
            raise ExportError(f"cannot tell the export format from '{path.name}': give the format "
                              f"({', '.join(FORMATS)}) or a .csv, .jsonl or .parquet name")
        return inferred
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (one of {', '.join(FORMATS)})")
    return fmt


def _check_columns(fmt: str, columns: list[str] | None) -> tuple[str, ...]:
    if columns is None:
        return DEFAULT_COLUMNS
    if fmt == "erc721":
        raise ExportError("columns apply to csv, jsonl and parquet exports; erc721 files have a fixed layout")
    unknown = [c for c in columns if c not in EXPORTABLE]
    if unknown:
        raise ExportError(f"unknown column '{unknown[0]}' (columns: {', '.join(EXPORTABLE)})")
    if not columns:
        raise ExportError("name at least one column to export")
    return tuple(dict.fromkeys(columns))


def _check_target(path: Path, fmt: str, overwrite: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise ExportError(f"the folder {parent} does not exist (create it first)")
    if not path.name or path.name in (".", ".."):
        raise ExportError(f"'{path}' names no file or folder to export to")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise TargetExists(f"{path} exists: choose another name, or overwrite it (--overwrite)")
        folder = fmt == "erc721"
        if path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise ExportError(f"{path} is {kind}; an {fmt} export writes a {'folder' if folder else 'file'} there: "
                              "choose another name")


# Reading ----------------------------------------------------------------------------------------
def _read_columns(fmt: str, wanted: tuple[str, ...], curated_table: bool) -> list[str]:
    """The stored columns to scan: what is written, plus what the chosen values and the counts need."""
    need = ["id", "label", "tags", "source_label", "source_tags", "curated"]
    need += ["text", "image", "attributes", "meta"] if fmt == "erc721" else list(wanted)
    read = list(dict.fromkeys(need))
    if not curated_table:  # the source's values are in label / tags; the rest is filled in by _normalise
        read = [c for c in read if c in COLUMNS]
    return read


def _normalise(row: dict[str, Any], values: str) -> dict[str, Any]:
    """A scanned row with every curation field filled in (a table written before curation has none), and
    label / tags set to the chosen values."""
    row.setdefault("source_label", row.get("label"))
    row.setdefault("source_tags", row.get("tags"))
    for name in ("tags", "source_tags", "curated", "captions"):
        if name in row and row[name] is None:
            row[name] = []
    row.setdefault("curated", [])
    row["excluded"] = bool(row.get("excluded"))
    row.setdefault("duplicate_of", None)
    if values == "source":
        row["label"], row["tags"] = row["source_label"], row["source_tags"]
    return row


# Writers: each writes the rows to a staged file path --------------------------------------------
def _write_csv(rows: Iterator[dict[str, Any]], path: Path, columns: tuple[str, ...]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:  # newline="": the csv module ends its own lines
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in columns])


def _write_jsonl(rows: Iterator[dict[str, Any]], path: Path, columns: tuple[str, ...]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path, columns: tuple[str, ...]) -> None:
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("excluded", pa.bool_(), nullable=False) if c == "excluded"
                        else TABLE_SCHEMA.field(c) for c in columns])
    with pq.ParquetWriter(str(path), schema) as writer:
        page: list[dict[str, Any]] = []
        for row in rows:
            page.append({c: row.get(c) for c in columns})
            if len(page) >= PAGE_ROWS:
                writer.write_table(pa.Table.from_pylist(page, schema=schema))
                page = []
        writer.write_table(pa.Table.from_pylist(page, schema=schema))  # also an empty export's schema


WRITERS: dict[str, Callable[[Iterator[dict[str, Any]], Path, tuple[str, ...]], None]] = {
    "csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}


def erc721_document(row: dict[str, Any], values: str = "curated") -> dict[str, Any]:
    """One item's ERC-721 metadata (name, description, image, attributes) from a normalised row."""
    meta: Any = {}
    with contextlib.suppress(ValueError, TypeError):
        meta = json.loads(row.get("meta") or "{}")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else ""
    tags_curated = values == "curated" and "tags" in row["curated"]
    return {"name": name or row["id"], "description": row.get("text") or "", "image": row.get("image") or "",
            "attributes": erc721_attributes(row.get("attributes"), list(row["tags"]), list(row["source_tags"]),
                                            tags_curated)}


def _write_erc721(rows: Iterator[dict[str, Any]], folder: Path, values: str) -> None:
    collided: dict[str, int] = {}  # stem -> next suffix to try, only for stems that collided (memory stays small)
    for row in rows:
        data = json.dumps(erc721_document(row, values), ensure_ascii=False, indent=2).encode("utf-8")
        stem = erc721_file_stem(str(row["id"]))
        n = collided.get(stem.lower(), 1)
        while True:
            name = f"{stem}.json" if n == 1 else f"{stem}-{n}.json"
            target = folder / name
            if target.parent != folder:  # defence in depth: the stem cannot hold a separator
                raise ExportError(f"unsafe file name for item {row['id']!r}")
            try:
                with open(target, "xb") as fh:  # exclusive: two ids never share a file, also case-insensitively
                    fh.write(data)
                break
            except FileExistsError:
                n += 1
                collided[stem.lower()] = n


# Atomic publication -----------------------------------------------------------------------------
def _staged_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}")


def _publish_file(path: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Write through `write` into a hidden file beside `path`, then rename it into place."""
    staged = _staged_name(path)
    try:
        write(staged)
        sync_file(staged)  # on disk before the rename makes it visible
        if overwrite:
            os.replace(staged, path)
        else:
            _link_new(staged, path)
        sync_dir(path.parent)
    finally:
        staged.unlink(missing_ok=True)


def _link_new(staged: Path, path: Path) -> None:
    """Put `staged` at `path` unless something got there since the check (a hard link never replaces)."""
    try:
        os.link(staged, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise _appeared(path) from None
        os.rename(staged, path)


def _appeared(path: Path) -> TargetExists:
    return TargetExists(f"{path} appeared while exporting: choose another name, or overwrite it (--overwrite)")


def _publish_folder(path: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Write through `write` into a hidden folder beside `path`, then rename it into place (an existing one,
    with `overwrite`, is renamed aside first and deleted after)."""
    staged = _staged_name(path)
    staged.mkdir()
    old = None
    try:
        write(staged)
        os.sync()  # one sync for every file (an fsync each would dominate on a million small files)
        if path.exists() and overwrite:
            old = _staged_name(path, "old")
            os.rename(path, old)
        try:
            os.rename(staged, path)  # fails on a non-empty folder that appeared meanwhile
        except OSError as e:
            if old is not None:
                os.rename(old, path)
                old = None
            raise _appeared(path) from e
        sync_dir(path.parent)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        if old is not None:
            _remove(old)


def _clean_stale(path: Path) -> None:
    """Delete what an export to this target killed mid-write left beside it (its process is gone)."""
    staged = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[0-9a-f]{8}\.(tmp|old)")
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            found = staged.fullmatch(entry.name)
            if found is not None and writer_gone(found.group(1)):
                _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


# Tags -------------------------------------------------------------------------------------------
def _split_tag(tag: str) -> tuple[str | None, str]:
    """(trait, value) for `trait=value`; (None, tag) for a plain tag (also `=x`: no trait before the `=`)."""
    trait, sep, value = tag.partition("=")
    return (trait, value) if sep and trait else (None, tag)


def _tag_form(attr: dict[str, Any]) -> str:
    """An attribute as the tag ingest makes of it (curata.ingest.nft.attribute_tags)."""
    trait, value = attr.get("trait_type"), trait_value(attr.get("value"))
    return f"{trait}={value}" if trait else value


def _tag_attribute(tag: str) -> dict[str, Any]:
    trait, value = _split_tag(tag)
    return {"value": tag} if trait is None else {"trait_type": trait, "value": value}
