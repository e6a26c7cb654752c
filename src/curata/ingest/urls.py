"""A text file of image URLs, one per line (blank lines and `#` comments ignored).

A CSV of URLs is an ordinary table (`curata.ingest.table`) whose image column holds URLs; both
end up downloaded by the pipeline through `curata.ingest.download`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from curata.ingest.records import RawRecord, SourceError

URL_LIST_SUFFIXES = {".txt", ".urls", ".lst"}


def url_id(url: str) -> str:
    """A stable id for an item known only by its URL."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def read_url_list(path: Path) -> Iterator[RawRecord]:
    if not path.is_file():
        raise SourceError(f"URL list not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise SourceError(f"{path.name} is not valid UTF-8 (byte {e.start})") from e
    for lineno, line in enumerate(lines, start=1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        record = RawRecord(ref=f"{path.name}:{lineno}", local_id=url_id(url), image=url, meta={"url": url})
        if not url.startswith(("http://", "https://", "ipfs://")):
            record.error = ("bad_url", f"not an http(s) or ipfs URL: {url[:200]}")
        yield record
