"""CSV / TSV / Parquet / JSONL tables with a column mapping. Image paths are relative to the file."""

from __future__ import annotations

import codecs
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.ingest.records import RawRecord, SourceError, clean_text, split_tags
from curata.objectstore import is_object_uri

TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".parquet", ".pq", ".jsonl", ".ndjson"}

# Column names tried, in order, when the user does not name one.
GUESSES = {
    "image": ("image", "path", "image_path", "file", "filename", "image_url", "url"),
    "text": ("text", "description", "caption", "title"),
    "label": ("label", "category", "class"),
    "id": ("id", "item_id", "uniq_id"),
    "split": ("split",),
    "captions": ("captions",),
    "tags": ("tags", "traits", "keywords"),
    "collection": ("collection", "collection_name"),
}


@dataclass
class ColumnMap:
    image: str | None = None
    text: str | None = None
    label: str | None = None
    tags: str | None = None
    tags_sep: str = ";"
    captions: str | None = None
    captions_sep: str = "|"
    id: str | None = None
    split: str | None = None
    collection: str | None = None  # the column naming each row's collection (a table of several)


def _decode(raw: bytes, notes: list[str]) -> str:
    """UTF-8 (with or without BOM); UTF-16 with a BOM (Excel's "Unicode text" export); otherwise
    cp1252 with a note, so no row is lost to an encoding."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            notes.append(f"file is not valid UTF-16 (byte {e.start}); undecodable bytes replaced")
            return raw.decode("utf-16", errors="replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        notes.append(f"file is not valid UTF-8 (byte {e.start}); decoded as cp1252")
        return raw.decode("cp1252", errors="replace")


def _read_frame(path: Path, file_notes: list[str]
                ) -> tuple[pd.DataFrame, dict[int, tuple[str, str]], list[int] | None]:
    """Read the table as strings. Returns the frame, per-row parse errors (JSONL) and, where known,
    the file line of each row (JSONL: blank lines are skipped, so row number and line differ)."""
    suffix = path.suffix.lower()
    row_errors: dict[int, tuple[str, str]] = {}
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame.astype(object).where(frame.notna(), None), row_errors, None
        text = _decode(path.read_bytes(), file_notes)
        if suffix in (".jsonl", ".ndjson"):
            rows: list[dict[str, Any]] = []
            lines: list[int] = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("line is JSON but not an object")
                except ValueError as e:
                    row_errors[len(rows)] = ("malformed_json", f"line {lineno}: {e}")
                    obj = {}
                rows.append(obj)
                lines.append(lineno)
            if rows and len(row_errors) == len(rows):
                # Not JSON Lines at all (often a pretty-printed JSON array): one clear message, not
                # "no image column found" nor one error per line.
                raise SourceError(f"{path.name} is not JSON Lines: no line holds a JSON object "
                                  f"({row_errors[0][1]})")
            return pd.DataFrame(rows, dtype=object), row_errors, lines
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        # index_col=False: when data rows have one field more than the header (a trailing comma on
        # every row), pandas would otherwise turn the first column into the index and shift every
        # value one column to the left without a word.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
            file_notes.append("some rows have more fields than the header; the extra fields were ignored")
        return frame, row_errors, None
    except SourceError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise SourceError(f"cannot read table {path.name}: {e}") from e


def _pick(columns: list[str], wanted: str | None, role: str, required: bool = False) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise SourceError(
                f"column '{wanted}' (given for {role}) is missing; the table has: {', '.join(columns)}"
            )
        return wanted
    lowered = {c.lower(): c for c in columns}
    for guess in GUESSES.get(role, ()):
        if guess in lowered:
            return lowered[guess]
    if required:
        raise SourceError(
            f"no {role} column found (tried {', '.join(GUESSES[role])}); name it with --{role}-col. "
            f"The table has: {', '.join(columns)}"
        )
    return None


def _is_url(value: str) -> bool:
    """A URL to download, or an object URI kept as it is: either way not a path relative to the table."""
    return value.startswith(("http://", "https://", "ipfs://")) or is_object_uri(value)


def read_table(path: Path, columns: ColumnMap) -> Iterator[RawRecord]:
    if not path.is_file():
        raise SourceError(f"table not found: {path}")
    file_notes: list[str] = []
    frame, row_errors, lines = _read_frame(path, file_notes)
    if frame.empty and not row_errors:
        raise SourceError(f"table {path.name} has no rows")
    names = [str(c) for c in frame.columns]
    image_col = _pick(names, columns.image, "image", required=True)
    text_col = _pick(names, columns.text, "text")
    label_col = _pick(names, columns.label, "label")
    id_col = _pick(names, columns.id, "id")
    split_col = _pick(names, columns.split, "split")
    tags_col = _pick(names, columns.tags, "tags")
    captions_col = _pick(names, columns.captions, "captions")
    collection_col = _pick(names, columns.collection, "collection")
    mapped = {c for c in (image_col, text_col, label_col, id_col, split_col, tags_col, captions_col, collection_col)
              if c}
    unmapped = [c for c in names if c not in mapped]
    missing = [f"--{role}-col" for role, col in (("label", label_col), ("tags", tags_col)) if col is None]
    if missing and unmapped:  # say once what stayed in meta, so 0 labels or 0 tags is never a silent surprise
        file_notes.append(f"no {' or '.join(m[2:-4] for m in missing)} column found; kept in meta: "
                          f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''} "
                          f"(name one with {' / '.join(missing)})")
    base = path.parent.resolve()
    # Data rows start on line 2 of a CSV (after the header); JSONL rows are numbered by line.
    first_line = 2 if path.suffix.lower() in (".csv", ".tsv", ".tab") else 1
    for i, row in enumerate(frame.to_dict("records")):
        ref = f"{path.name}:{lines[i] if lines else i + first_line}"
        image = clean_text(row.get(image_col))
        local_id = clean_text(row.get(id_col)) if id_col else ""
        record = RawRecord(ref=ref, local_id=local_id or image or f"row{i}", notes=list(file_notes))
        if i in row_errors:
            record.error = row_errors[i]
            yield record
            continue
        if not image:
            record.error = ("missing_image", f"empty '{image_col}' cell")
        elif _is_url(image):
            record.image = image
        else:
            record.image = os.path.normpath(os.path.join(base, image))
        record.text = clean_text(row.get(text_col)) if text_col else ""
        record.label = clean_text(row.get(label_col)) or None if label_col else None
        record.split = clean_text(row.get(split_col)) or None if split_col else None
        record.collection = clean_text(row.get(collection_col)) or None if collection_col else None
        if tags_col:
            record.tags = split_tags(row.get(tags_col), columns.tags_sep)
        if captions_col:
            record.captions = split_tags(row.get(captions_col), columns.captions_sep)
        if not record.captions and record.text:
            record.captions = [record.text]
        record.meta = {k: _plain(v) for k, v in row.items() if k not in mapped and _plain(v) not in (None, "")}
        if id_col and not local_id:
            record.error = record.error or ("missing_id", f"empty '{id_col}' cell")
        yield record


def _plain(value: Any) -> Any:
    """JSON-friendly cell value."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.ndarray):  # a Parquet list cell: .item() would raise for size != 1
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
