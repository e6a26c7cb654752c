"""CSV / TSV / Parquet / JSONL tables with a column mapping. Image paths are relative to the file."""

from __future__ import annotations

import codecs
import io
import itertools
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


CHUNK_ROWS = 10_000  # rows read at a time: a table of millions of rows is never held whole
_Chunk = tuple[pd.DataFrame, dict[int, tuple[str, str]], "list[int] | None"]


def _decode(raw: bytes, notes: list[str]) -> str:
    """UTF-16 with a BOM (Excel's "Unicode text" export), read whole: such files are small."""
    try:
        return raw.decode("utf-16")
    except UnicodeDecodeError as e:
        notes.append(f"file is not valid UTF-16 (byte {e.start}); undecodable bytes replaced")
        return raw.decode("utf-16", errors="replace")


def _encoding(path: Path, notes: list[str]) -> str:
    """UTF-8 (with or without BOM), or "utf-16" (a BOM), or cp1252 with a note when the file is not valid
    UTF-8, so no row is lost to an encoding. One streamed pass over the file decides, before any row is read."""
    with path.open("rb") as fh:
        if fh.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return "utf-16"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        offset = 0  # of the block's first byte in the file
        while True:
            block = fh.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the last block's end
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                notes.append(f"file is not valid UTF-8 (byte {offset - pending + e.start}); decoded as cp1252")
                return "cp1252"
            if not block:
                return "utf-8-sig"
            offset += len(block)


def _read_chunks(path: Path, file_notes: list[str]) -> tuple[list[str], Iterator[_Chunk]]:
    """The table's columns, and its rows as strings, CHUNK_ROWS at a time: (frame, per-row parse errors
    (JSONL) by row within the chunk, and where known the file line of each row (JSONL: blank lines are
    skipped, so row number and line differ))."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return _parquet_chunks(path)
        encoding = _encoding(path, file_notes)
        if suffix in (".jsonl", ".ndjson"):
            return _jsonl_chunks(path, encoding, file_notes)
        return _csv_chunks(path, encoding, file_notes)
    except SourceError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise SourceError(f"cannot read table {path.name}: {e}") from e


def _guarded(path: Path, chunks: Iterator[_Chunk]) -> Iterator[_Chunk]:
    """A read error in a later chunk is the same one clear SourceError as in the first."""
    try:
        yield from chunks
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise SourceError(f"cannot read table {path.name}: {e}") from e


def _parquet_chunks(path: Path) -> tuple[list[str], Iterator[_Chunk]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)

    def chunks() -> Iterator[_Chunk]:
        for batch in file.iter_batches(batch_size=CHUNK_ROWS):
            frame = pa.Table.from_batches([batch]).to_pandas()  # the pandas metadata applied, as read_parquet
            yield frame.astype(object).where(frame.notna(), None), {}, None

    return [], _guarded(path, chunks())  # the columns are the first chunk's (a pandas index is not one)


def _csv_chunks(path: Path, encoding: str, file_notes: list[str]) -> tuple[list[str], Iterator[_Chunk]]:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    # index_col=False: when data rows have one field more than the header (a trailing comma on every row),
    # pandas would otherwise turn the first column into the index and shift every value one column to the left
    # without a word.
    source: Any = io.StringIO(_decode(path.read_bytes(), file_notes)) if encoding == "utf-16" else path
    reader = pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False, index_col=False, chunksize=CHUNK_ROWS,
                         **({} if encoding == "utf-16" else {"encoding": encoding, "encoding_errors": "replace"}))
    noted = False

    def chunk() -> pd.DataFrame | None:
        nonlocal noted
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = next(reader, None)
        if not noted and any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
            file_notes.append("some rows have more fields than the header; the extra fields were ignored")
            noted = True
        return frame

    def chunks() -> Iterator[_Chunk]:
        while (frame := chunk()) is not None:
            yield frame, {}, None

    return [], _guarded(path, chunks())


def _jsonl_chunks(path: Path, encoding: str, file_notes: list[str]) -> tuple[list[str], Iterator[_Chunk]]:
    """Two streamed passes: the first finds every key (a key seen only on the last line is still a column) and
    whether any line is a JSON object at all; the second yields the rows."""
    def lines() -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        with (io.StringIO(_decode(path.read_bytes(), file_notes)) if encoding == "utf-16"
              else path.open(encoding=encoding, errors="replace")) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("line is JSON but not an object")
                except ValueError as e:
                    yield lineno, None, f"line {lineno}: {e}"
                    continue
                yield lineno, obj, ""

    keys: dict[str, None] = {}
    rows = good = 0
    first_error = ""
    notes_before = list(file_notes)
    for _, obj, error in lines():
        rows += 1
        if obj is None:
            first_error = first_error or error
        else:
            good += 1
            keys.update(dict.fromkeys(obj))
    file_notes[:] = notes_before  # the second pass notes a UTF-16 decoding problem again
    if rows and not good:
        # Not JSON Lines at all (often a pretty-printed JSON array): one clear message, not "no image column
        # found" nor one error per line.
        raise SourceError(f"{path.name} is not JSON Lines: no line holds a JSON object ({first_error})")
    names = list(keys)

    def chunks() -> Iterator[_Chunk]:
        stream = lines()
        while batch := list(itertools.islice(stream, CHUNK_ROWS)):
            errors = {i: ("malformed_json", error) for i, (_, obj, error) in enumerate(batch) if obj is None}
            frame = pd.DataFrame([obj or {} for _, obj, _ in batch], columns=names, dtype=object)
            yield frame, errors, [lineno for lineno, _, _ in batch]

    return names, _guarded(path, chunks())


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
    """The table's rows as records, read CHUNK_ROWS at a time. Errors about the whole table (not found, no
    image column, not a table at all) are raised before the first record."""
    if not path.is_file():
        raise SourceError(f"table not found: {path}")
    file_notes: list[str] = []
    names, chunks = _read_chunks(path, file_notes)
    first = next(chunks, None)
    if first is None or (first[0].empty and not first[1]):
        raise SourceError(f"table {path.name} has no rows")
    names = names or [str(c) for c in first[0].columns]
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
    return _records(path, itertools.chain([first], chunks), columns, file_notes, mapped,
                    (image_col, text_col, label_col, id_col, split_col, tags_col, captions_col, collection_col))


def _records(path: Path, chunks: Iterator[_Chunk], columns: ColumnMap, file_notes: list[str], mapped: set[str],
             roles: tuple[str | None, ...]) -> Iterator[RawRecord]:
    image_col, text_col, label_col, id_col, split_col, tags_col, captions_col, collection_col = roles
    assert image_col is not None
    base = path.parent.resolve()
    # Data rows start on line 2 of a CSV (after the header); JSONL rows are numbered by line.
    first_line = 2 if path.suffix.lower() in (".csv", ".tsv", ".tab") else 1
    i = -1
    for frame, row_errors, lines in chunks:
        for j, row in enumerate(frame.to_dict("records")):
            i += 1
            ref = f"{path.name}:{lines[j] if lines else i + first_line}"
            image = clean_text(row.get(image_col))
            local_id = clean_text(row.get(id_col)) if id_col else ""
            record = RawRecord(ref=ref, local_id=local_id or image or f"row{i}", notes=list(file_notes))
            if j in row_errors:
                record.error = row_errors[j]
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
