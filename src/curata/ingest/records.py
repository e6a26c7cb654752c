"""What a source reader yields: raw records, before their images are verified.

Readers (folder, table, NFT metadata, URL list) only parse their format. Everything shared —
checking images, hashing, duplicate ids, the report — happens once in `curata.ingest.pipeline`.
A reader that finds a problem with one record yields it with `error` set instead of raising, so a
bad record never stops the others and nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RawRecord:
    ref: str  # where the record came from, for the report: a file path, "labels.csv:12", a URL
    local_id: str  # id within the source; the workspace id is "<source>/<local_id>"
    image: str | None = None  # local path or URL
    text: str = ""
    captions: list[str] = field(default_factory=list)
    label: str | None = None
    tags: list[str] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    collection: str | None = None
    error: tuple[str, str] | None = None  # (code, reason) found while parsing
    skip: tuple[str, str] | None = None  # (code, reason): not an item (hidden file, dangling link), reported only
    notes: list[str] = field(default_factory=list)  # warnings that do not reject the item


class SourceError(ValueError):
    """The source as a whole cannot be read (missing file, unknown format, missing column)."""


# Cells that spell "missing": tables written by pandas often carry a literal "nan" (CryptoPunks' labels
# file has 8 punks with accessories "nan"). "NA" is left alone: it can be a real value.
MISSING_WORDS = {"nan", "null", "none", "<na>", "#n/a"}


def clean_text(value: Any) -> str:
    """Normalise a text cell: None/NaN/"nan"/"null" -> "", stripped, control characters removed."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    text = str(value)
    if not text.isprintable():  # the rare slow path
        text = "".join(ch for ch in text if ch.isprintable() or ch in "\n\t")
    text = text.strip()
    return "" if text.lower() in MISSING_WORDS else text


def split_tags(value: Any, sep: str) -> list[str]:
    """Tags from a separated string, or from a list cell (Parquet, JSONL) taken as is."""
    if isinstance(value, list | tuple | np.ndarray):
        parts = [clean_text(v) for v in value]
    else:
        parts = clean_text(value).split(sep)
    seen: dict[str, None] = {}
    for part in parts:
        tag = part.strip()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)
