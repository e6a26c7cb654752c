"""A generic paginated JSON API, described by a spec file (JSON or TOML) instead of a one-off script:
"query a product database and keep the first N items that have fields X, Y, Z".

The spec names the URL template, the pagination (page number, offset, cursor, next link, or a single
request), the dotted path to the items list, a field mapping (id, image, text, label, tags, traits,
captions, collection, meta) and filters (required non-empty fields, equals, contains). The format is
documented in the README (`curata collect api`); ``load_spec`` checks it and names the bad key.

The journal keeps each page's items as served, and records are built from them at the end, so a
rerun with an edited mapping or filters reuses the pages already fetched; paging resumes after the
last page journaled and goes on only while fewer than ``limit`` items pass the filters.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

from curata.ingest.nft import attribute_tags
from curata.ingest.records import RawRecord, clean_text, split_tags
from curata.ingest.urls import url_id
from curata.progress import SILENT, Reporter
from curata.workspace import Workspace

from .base import (
    CollectOptions,
    CollectReport,
    DownloadError,
    MetadataSession,
    finish,
    get_path,
    is_empty,
    open_journal,
)

__all__ = ["ApiSpec", "collect_api", "load_spec", "spec_from_dict"]

PAGINATION_TYPES = ("none", "page", "offset", "cursor", "next")
_PLACEHOLDERS = {"page", "offset", "page_size", "cursor"}


@dataclass(frozen=True)
class Pagination:
    type: str = "none"
    page_size: int = 50
    start: int | None = None  # first page number (default 1) or offset (default 0)
    cursor: str | None = None  # cursor: dotted path in the answer to the next cursor
    cursor_param: str | None = None  # cursor: query parameter that carries it (or {cursor} in the URL)
    next: str | None = None  # next: dotted path in the answer to the next page's URL
    total: str | None = None  # page/offset: dotted path to the total item count (stops early)
    max_pages: int = 1000


@dataclass(frozen=True)
class Fields:
    image: str
    id: str | None = None
    text: tuple[str, ...] = ()
    label: str | None = None
    tags: tuple[str, ...] = ()
    tags_sep: str = ","
    traits: dict[str, str] = field(default_factory=dict)  # tag name -> path: tags "name=value"
    captions: tuple[str, ...] = ()
    collection: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # meta key -> path


@dataclass(frozen=True)
class Filters:
    required: tuple[str, ...] = ()
    equals: dict[str, Any] = field(default_factory=dict)
    contains: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiSpec:
    name: str
    url: str
    fields: Fields
    items: str = ""
    limit: int | None = None
    collection: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pagination: Pagination = field(default_factory=Pagination)
    filters: Filters = field(default_factory=Filters)


# ------------------------------------------------------------------------------------------ the spec


def load_spec(path: Path) -> ApiSpec:
    """Read and check a spec file (``.toml``, else JSON); ``ValueError`` names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"spec file not found: {path}") from None
    is_toml = path.suffix.lower() == ".toml"
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path.name}: not valid {'TOML' if is_toml else 'JSON'}: {e}") from None
    return spec_from_dict(data, default_name=re.sub(r"[^\w.\-]+", "-", path.stem), where=path.name)


def _strs(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"'{key}' must be a dotted path or a list of them")


def _str_map(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"'{key}' must be a table of name = dotted path")
    return {str(k): v for k, v in value.items()}


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown key {where}{unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def spec_from_dict(data: Any, default_name: str = "api", where: str = "spec") -> ApiSpec:
    """Build and check an ``ApiSpec`` from parsed JSON/TOML."""
    try:
        return _spec_from_dict(data, default_name)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def _spec_from_dict(data: Any, default_name: str) -> ApiSpec:
    if not isinstance(data, dict):
        raise ValueError("the spec must be an object/table")
    _check_keys(data, {"name", "url", "items", "limit", "collection", "headers", "pagination", "fields",
                       "filters"}, "")
    url = data.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("'url' must be an http(s) URL template")
    used = set(re.findall(r"{(\w*)}", url))
    if used - _PLACEHOLDERS:
        raise ValueError(f"'url' has unknown placeholder {{{sorted(used - _PLACEHOLDERS)[0]}}} "
                         f"(known: {', '.join(sorted(_PLACEHOLDERS))})")
    pag = data.get("pagination") or {}
    if not isinstance(pag, dict):
        raise ValueError("'pagination' must be a table")
    _check_keys(pag, {f for f in Pagination.__dataclass_fields__}, "pagination.")
    pagination = Pagination(**pag)
    if pagination.type not in PAGINATION_TYPES:
        raise ValueError(f"pagination.type must be one of {', '.join(PAGINATION_TYPES)}, not {pagination.type!r}")
    if pagination.page_size < 1 or pagination.max_pages < 1:
        raise ValueError("pagination.page_size and pagination.max_pages must be at least 1")
    if pagination.type == "cursor" and not pagination.cursor:
        raise ValueError("pagination.type 'cursor' needs pagination.cursor (path to the next cursor)")
    if pagination.type == "cursor" and not pagination.cursor_param and "cursor" not in used:
        raise ValueError("pagination.type 'cursor' needs pagination.cursor_param or {cursor} in the url")
    if pagination.type == "next" and not pagination.next:
        raise ValueError("pagination.type 'next' needs pagination.next (path to the next page URL)")
    if pagination.type == "page" and "page" not in used:
        raise ValueError("pagination.type 'page' needs {page} in the url")
    if pagination.type == "offset" and "offset" not in used:
        raise ValueError("pagination.type 'offset' needs {offset} in the url")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, dict) or not isinstance(raw_fields.get("image"), str):
        raise ValueError("'fields.image' (the path to the image URL) is required")
    _check_keys(raw_fields, {f for f in Fields.__dataclass_fields__}, "fields.")
    fields = Fields(
        image=raw_fields["image"], id=raw_fields.get("id"), text=_strs(raw_fields.get("text"), "fields.text"),
        label=raw_fields.get("label"), tags=_strs(raw_fields.get("tags"), "fields.tags"),
        tags_sep=str(raw_fields.get("tags_sep", ",")), traits=_str_map(raw_fields.get("traits"), "fields.traits"),
        captions=_strs(raw_fields.get("captions"), "fields.captions"), collection=raw_fields.get("collection"),
        meta=_str_map(raw_fields.get("meta"), "fields.meta"),
    )
    raw_filters = data.get("filters") or {}
    if not isinstance(raw_filters, dict):
        raise ValueError("'filters' must be a table")
    _check_keys(raw_filters, {"required", "equals", "contains"}, "filters.")
    equals = raw_filters.get("equals") or {}
    if not isinstance(equals, dict):
        raise ValueError("'filters.equals' must be a table of path = value")
    filters = Filters(required=_strs(raw_filters.get("required"), "filters.required"), equals=dict(equals),
                      contains=_str_map(raw_filters.get("contains"), "filters.contains"))
    limit = data.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError("'limit' must be a positive integer")
    headers = data.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError("'headers' must be a table of name = value")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]{1,100}", name):
        raise ValueError(f"'name' must be a short identifier (letters, digits, . _ -), not {name!r}")
    return ApiSpec(name=name, url=url, fields=fields, items=str(data.get("items", "")), limit=limit,
                   collection=data.get("collection"), headers={str(k): str(v) for k, v in headers.items()},
                   pagination=pagination, filters=filters)


def _expand_env(value: str) -> str:
    """``${NAME}`` from the environment: secrets stay out of spec files (and out of the journal)."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"header needs environment variable {name}, which is not set")
        return os.environ[name]

    return re.sub(r"\$\{(\w+)\}", sub, value)


# ------------------------------------------------------------------------------------- items -> records


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(t for t in (_as_text(v) for v in value) if t)
    if isinstance(value, dict):
        return ""
    return clean_text(value)


def filter_reason(item: Any, spec: ApiSpec) -> str | None:
    """Why ``item`` is left out, or None when it passes (image URL present, filters met)."""
    if not isinstance(item, dict):
        return f"item is not an object ({type(item).__name__})"
    for path in (spec.fields.image, *spec.filters.required):
        if is_empty(get_path(item, path)):
            return f"missing {path}"
    for path, expected in spec.filters.equals.items():
        value = get_path(item, path)
        if value != expected and str(value) != str(expected):
            return f"{path} != {expected!r}"
    for path, needle in spec.filters.contains.items():
        value = get_path(item, path)
        wanted = needle.lower()
        if isinstance(value, list):
            ok = any(wanted in str(v).lower() for v in value)
        else:
            ok = value is not None and wanted in str(value).lower()
        if not ok:
            return f"{path} does not contain {needle!r}"
    return None


def item_record(item: dict[str, Any], spec: ApiSpec, page_url: str, index: int) -> RawRecord:
    """One API item as a record (the item has passed ``filter_reason``)."""
    f = spec.fields
    image = get_path(item, f.image)
    if isinstance(image, list):
        image = image[0] if image else None
    image = urljoin(page_url, clean_text(image)) if not str(image).startswith("ipfs://") else str(image)
    raw_id = get_path(item, f.id) if f.id else None
    local_id = _as_text(raw_id) or url_id(image)
    record = RawRecord(ref=f"{page_url} items[{index}]", local_id=re.sub(r"[\s/]+", "_", local_id), image=image)
    record.text = ". ".join(t for t in (_as_text(get_path(item, p)) for p in f.text) if t)
    record.label = (_as_text(get_path(item, f.label)) or None) if f.label else None
    tags: list[str] = []
    for path in f.tags:
        tags.extend(split_tags(get_path(item, path) or [], f.tags_sep))
    traits = [{"trait_type": name, "value": _as_text(get_path(item, path))} for name, path in f.traits.items()
              if not is_empty(get_path(item, path))]
    record.tags = list(dict.fromkeys([*tags, *attribute_tags(traits)]))
    record.attributes = traits
    record.captions = [c for c in (_as_text(get_path(item, p)) for p in f.captions) if c]
    record.collection = (_as_text(get_path(item, f.collection)) if f.collection else "") or spec.collection
    record.meta = {key: get_path(item, path) for key, path in f.meta.items()}
    record.meta["source_url"] = page_url
    if image and not image.startswith(("http://", "https://", "ipfs://")):
        record.error = ("bad_url", f"image is not an http(s) or ipfs URL: {image[:200]}")
    return record


# ---------------------------------------------------------------------------------------- paging


def _page_url(spec: ApiSpec, n: int, cursor: str | None) -> str:
    p = spec.pagination
    page = (1 if p.start is None else p.start) + n
    offset = (0 if p.start is None else p.start) + n * p.page_size
    url = spec.url.format_map({"page": page, "offset": offset, "page_size": p.page_size,
                               "cursor": quote(cursor or "", safe="")})
    if p.type == "cursor" and p.cursor_param and cursor:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != p.cursor_param]
        url = urlunsplit(parts._replace(query=urlencode([*query, (p.cursor_param, cursor)])))
    return url


class _State:
    def __init__(self, events: list[dict[str, Any]]):
        self.pages: list[dict[str, Any]] = []  # {"url", "items"}
        self.cursor: str | None = None
        self.next_url: str | None = None
        self.end = False
        for event in events:
            if event.get("t") == "page":
                self.pages.append({"url": event.get("url", ""), "items": event.get("items", [])})
                self.cursor = event.get("cursor")
                self.next_url = event.get("next_url")
                self.end = bool(event.get("end"))

    def records(self, spec: ApiSpec, skipped: Counter[str] | None = None) -> Iterator[RawRecord]:
        for page in self.pages:
            for i, item in enumerate(page["items"]):
                reason = filter_reason(item, spec)
                if reason is None:
                    yield item_record(item, spec, page["url"], i)
                elif skipped is not None:
                    skipped[reason] += 1


def collect_api(
    workspace: Workspace,
    spec: ApiSpec,
    options: CollectOptions | None = None,
    reporter: Reporter = SILENT,
    *,
    source: str | None = None,
) -> CollectReport:
    """Page through the API until ``limit`` items pass the filters (or the pages end); ingest them."""
    options = options or CollectOptions()
    limit = min(x for x in (spec.limit, options.max_items, 1 << 62) if x is not None)
    headers = {k: _expand_env(v) for k, v in spec.headers.items()}
    # What identifies the pages fetched: the URL and how it is paged; not the mapping or the filters.
    fingerprint = {"collector": "api", "url": spec.url, "items": spec.items, "pagination": asdict(spec.pagination)}
    journal = open_journal(workspace, f"api-{spec.name}", fingerprint)
    report = CollectReport("api", source or spec.url, str(journal.path))
    p = spec.pagination
    with journal, MetadataSession(options) as session:
        state = _State(journal.open(options.refresh))
        report.resumed = bool(state.pages)
        report.reused = len(state.pages)
        kept = sum(1 for _ in state.records(spec))
        advance = reporter.task(f"{spec.name} pages", None)
        advance(len(state.pages))
        while not state.end and kept < limit:
            n = len(state.pages)
            if n >= p.max_pages:
                report.fail(spec.name, f"stopped after pagination.max_pages={p.max_pages} pages")
                break
            url = state.next_url if (p.type == "next" and n) else _page_url(spec, n, state.cursor)
            if not url:
                break
            try:
                answer = session.get_json(url, headers=headers)
            except DownloadError as e:
                report.fail(url, e.reason)
                break
            items = get_path(answer, spec.items, default=None)
            if not isinstance(items, list):
                got = "nothing" if items is None else type(items).__name__
                report.fail(url, f"items path {spec.items or '(the answer itself)'!r} is not a list (got {got})")
                break
            cursor, next_url, end = state.cursor, None, not items or p.type == "none"
            if p.type == "cursor":
                cursor = _as_text(get_path(answer, p.cursor or ""))
                end = end or not cursor or cursor == state.cursor
            elif p.type == "next":
                found = _as_text(get_path(answer, p.next or ""))
                next_url = urljoin(url, found) if found else None
                end = end or not next_url or next_url == url
            elif p.total:
                total = get_path(answer, p.total)
                seen = ((0 if p.start is None else p.start) if p.type == "offset" else 0) + (n + 1) * p.page_size
                end = end or (isinstance(total, int) and seen >= total)
            journal.append({"t": "page", "n": n, "url": url, "items": items, "cursor": cursor,
                            "next_url": next_url, "end": end})
            state.pages.append({"url": url, "items": items})
            state.cursor, state.next_url, state.end = cursor, next_url, end
            kept += sum(1 for item in items if filter_reason(item, spec) is None)
            report.fetched += 1
            advance(1)
        report.requests = session.requests
    skipped: Counter[str] = Counter()
    records = list(state.records(spec, skipped))
    report.skipped = dict(skipped.most_common())
    report.complete = state.end or len(records) >= limit
    return finish(report, records[:limit], workspace, options, reporter, default_source=spec.name)
