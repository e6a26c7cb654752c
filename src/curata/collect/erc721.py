"""ERC-721 token metadata by URI: fetch each token's JSON (http(s), ipfs:// through the gateway list,
or an on-chain ``data:application/json`` URI), then its image through the ingest pipeline.

Records are built by the NFT reader (`curata.ingest.nft`), so tags (``trait=value``), the NFT1000
caption and the text are the same as for a local metadata folder. Each finished token document is
journaled as it arrives; a token whose document could not be fetched is listed in the report with the
reason and is fetched again by the next run.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from curata.ingest.nft import _token_record  # the NFT reader's record builder, reused as is
from curata.ingest.records import RawRecord, SourceError
from curata.ingest.urls import url_id
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

from .base import (
    CollectOptions,
    CollectReport,
    DownloadError,
    MetadataSession,
    finish,
    open_journal,
    run_concurrently,
)

__all__ = ["collect_erc721", "expand_range", "read_uri_file", "token_local_id"]


def read_uri_file(path: Path) -> list[str]:
    """Token URIs from a text file, one a line; blank lines and ``#`` comments are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise SourceError(f"token URI file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def expand_range(template: str, spec: str) -> list[str]:
    """``ipfs://CID/{id}`` with ``0-9`` (or ``1,5,7-9``) -> one URI per token id."""
    if "{id}" not in template:
        raise ValueError(f"URI template {template!r} has no {{id}} placeholder")
    ids: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"bad token id range {part!r} (expected N or N-M)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ValueError(f"bad token id range {part!r}: end before start")
        ids.extend(range(first, last + 1))
    return [template.replace("{id}", str(i)) for i in ids]


def token_local_id(uri: str) -> str:
    """A token's id from its URI: the last path segment without ``.json`` (``ipfs://CID/42`` -> ``42``);
    a hash of the URI when that says nothing (queries, data: URIs, a bare CID)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https", "ipfs") and not parts.query:
        segments = [s for s in (parts.netloc + parts.path).split("/") if s]
        last = segments[-1] if len(segments) > 1 else ""
        last = re.sub(r"\.json$", "", unquote(last), flags=re.IGNORECASE)
        if re.fullmatch(r"[\w.\-]{1,100}", last):
            return last
    return url_id(uri)


def _data_uri_json(uri: str) -> Any:
    """Parse ``data:application/json[;base64],...`` (on-chain metadata) without a request."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ValueError("data: URI without a comma")
    if "json" not in header.lower():
        raise ValueError(f"data: URI is not JSON ({header[5:60] or 'no media type'})")
    raw = base64.b64decode(payload) if header.lower().endswith(";base64") else unquote(payload).encode("utf-8")
    return json.loads(raw)


def _unique(uris: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(u.strip() for u in uris if u and u.strip()))


def collect_erc721(
    workspace: Workspace,
    uris: Sequence[str],
    options: CollectOptions | None = None,
    reporter: Reporter = SILENT,
    *,
    label_trait: str | None = None,
    source: str = "erc721",
) -> CollectReport:
    """Fetch token metadata for ``uris`` (first ``max_items``), then ingest their images; resumable."""
    options = options or CollectOptions()
    uris = _unique(uris)
    if not uris:
        raise ValueError("no token URIs given")
    if options.max_items is not None:
        uris = uris[: options.max_items]
    # The fingerprint is the URI list, so a rerun over the same list resumes. The journal keeps the
    # token documents as served, not our records: options such as --label-trait apply on a rerun.
    fingerprint = {"collector": "erc721", "uris": url_id("\n".join(uris)), "n": len(uris)}
    journal = open_journal(workspace, "erc721", fingerprint)
    report = CollectReport("erc721", source, str(journal.path))
    done: dict[str, Any] = {}
    failed: dict[str, str] = {}
    lock = threading.Lock()
    with journal, MetadataSession(options) as session:
        for event in journal.open(options.refresh):
            if event.get("t") == "token" and "token" in event:
                done[str(event.get("uri"))] = event["token"]
        report.resumed = bool(done)
        report.reused = sum(1 for u in uris if u in done)
        pending = [u for u in uris if u not in done]
        advance = reporter.task("token metadata", len(uris))
        advance(len(uris) - len(pending))

        def fetch(uri: str, stop: threading.Event) -> None:
            if stop.is_set():
                return
            try:
                token = _data_uri_json(uri) if uri.startswith("data:") else session.get_json(uri)
            except DownloadError as e:
                with lock:
                    failed[uri] = e.reason
                advance(1)
                return
            except ValueError as e:  # a data: URI that does not decode
                with lock:
                    failed[uri] = f"invalid data: URI ({e})"
                advance(1)
                return
            journal.append({"t": "token", "uri": uri, "token": token})
            with lock:
                done[uri] = token
                report.fetched += 1
            advance(1)

        run_concurrently(fetch, pending, options.concurrency)
        report.requests = session.requests
    records: list[RawRecord] = []
    for uri in uris:
        if uri in done:
            ref = uri if len(uri) <= 200 else uri[:200] + "..."  # on-chain data: URIs run to kilobytes
            record = _token_record(done[uri], ref, token_local_id(uri), {}, label_trait)
            record.meta.setdefault("metadata_uri", ref)
            records.append(record)
        else:
            reason = failed.get(uri, "not fetched (interrupted)")
            report.fail(uri, reason)
            records.append(RawRecord(ref=uri, local_id=token_local_id(uri), error=("metadata_failed", reason)))
    report.complete = len(done) >= len(uris)
    return finish(report, records, workspace, options, reporter, default_source="erc721")
