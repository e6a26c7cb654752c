"""Images sent to the service: read them from a request (multipart upload, base64 JSON, a URL when the
operator allows it, or a workspace item), then decode them with the limits enforced before any model
runs. Decoding goes through `curata.imageio.load_image`, the loader every other stage uses.

The request body was already capped by `BodyLimitMiddleware`; here the number of images, the type
(sniffed from the bytes, never taken from a header) and the pixel count are checked.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import anyio.to_thread
import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from curata.imageio import ImageError, load_image
from curata.objectstore import is_object_uri
from curata.service.errors import ApiError
from curata.service.schemas import ImagesRequest
from curata.service.settings import Settings

# Magic numbers of the formats the service accepts: what the bytes say, whatever the headers claim.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff")
_MAX_REDIRECTS = 3


def sniff_image_type(head: bytes) -> str | None:
    """The image media type the leading bytes show, or None for anything else."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, media_type in _SIGNATURES:
        if head.startswith(magic):
            return media_type
    return None


class ItemLookup(Protocol):
    """What image reading needs from the workspace (the service state): an item's image path and text."""

    def item_image(self, item_id: str) -> tuple[Path | str, str]: ...


@dataclass
class ImageSource:
    """One image of a request, not decoded yet: raw bytes, a workspace file, or a URL to fetch."""

    field: str  # where it came from in the request, for error messages: "files[1]", "images[0].url"
    name: str  # a label for the result: the upload's file name, "images[0]", or the item id
    data: bytes | None = None
    path: Path | str | None = None  # a workspace item's file, or its object URI
    url: str | None = None
    text: str = ""
    item: str | None = None


@dataclass
class DecodedImage:
    name: str
    image: np.ndarray
    text: str
    item: str | None


async def read_sources(request: Request, settings: Settings, items: ItemLookup) -> list[ImageSource]:
    """The images of a request, from a multipart form (`files`, optional `text`, `item`, `url` fields)
    or a JSON body `{"images": [{"base64"|"url"|"item": ..., "text": ...}]}`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        sources = await _from_multipart(request, settings, items)
    elif media_type == "application/json" or media_type.endswith("+json"):
        # Parsed in a worker thread: the event loop (and /v1/health) never waits on a client's JSON.
        sources = await anyio.to_thread.run_sync(_from_json, await request.body(), settings, items)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"send images as multipart/form-data (field 'files') or as application/json "
                       f"({{\"images\": [{{\"base64\": ...}}]}}), not {media_type or 'a body without a type'}",
                       "Content-Type")
    if not sources:
        raise ApiError(422, "no_images", "the request holds no image", "files" if media_type.startswith("multi")
                       else "images")
    if len(sources) > settings.max_images:
        raise ApiError(413, "too_many_images",
                       f"{len(sources)} images in one request; the limit is {settings.max_images}", "images")
    return sources


async def _from_multipart(request: Request, settings: Settings, items: ItemLookup) -> list[ImageSource]:
    try:
        # One more than allowed, so that too many files is reported as such below, with the limit.
        form = await request.form(max_files=settings.max_images + 1, max_fields=4 * settings.max_images + 8)
    except StarletteHTTPException as e:
        if "Too many files" in str(e.detail):
            raise ApiError(413, "too_many_images", f"more than {settings.max_images} files in one request",
                           "files") from None
        raise ApiError(400, "malformed_multipart", f"cannot parse the multipart body: {e.detail}") from None
    except Exception as e:  # any other parser failure on a malformed body is still the client's
        raise ApiError(400, "malformed_multipart", f"cannot parse the multipart body: {type(e).__name__}") from None
    sources: list[ImageSource] = []
    texts = [v for v in form.getlist("text") if isinstance(v, str)]
    for key, value in form.multi_items():
        if key in ("text",):
            continue
        if isinstance(value, UploadFile):
            if len(sources) >= settings.max_images:
                raise ApiError(413, "too_many_images", f"more than {settings.max_images} images in one request",
                               "files")
            data = await value.read()
            i = len(sources)
            sources.append(ImageSource(field=f"{key}[{i}]", name=value.filename or f"{key}[{i}]", data=data))
        elif key == "item":
            sources.append(_item_source(items, value, f"item[{len(sources)}]"))
        elif key == "url":
            sources.append(_url_source(settings, value, f"url[{len(sources)}]"))
        elif key == "files":
            raise ApiError(422, "not_a_file", "the 'files' field must hold file uploads, not text", "files")
        # other fields are ignored, as HTML forms send extras (submit buttons...)
    _attach_texts(sources, texts)
    return sources


def _attach_texts(sources: list[ImageSource], texts: list[str]) -> None:
    """One `text` for every image, or one per image in order (items bring their own text)."""
    if not texts:
        return
    if len(texts) not in (1, len(sources)):
        raise ApiError(422, "text_count", f"{len(texts)} texts for {len(sources)} images: give one text, or one "
                       "per image", "text")
    for i, source in enumerate(sources):
        source.text = texts[0] if len(texts) == 1 else texts[i]


def _from_json(body: bytes, settings: Settings, items: ItemLookup) -> list[ImageSource]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "too_deep", "the JSON body is nested too deeply") from None
    # Count before validating: pydantic would build every object of a flood first.
    listed = payload.get("images") if isinstance(payload, dict) else None
    if isinstance(listed, list) and len(listed) > settings.max_images:
        raise ApiError(413, "too_many_images",
                       f"{len(listed)} images in one request; the limit is {settings.max_images}", "images")
    try:
        request = ImagesRequest.model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(422, "invalid_request", str(first.get("msg", "invalid request")), field or None) from None
    if len(request.images) > settings.max_images:
        raise ApiError(413, "too_many_images",
                       f"{len(request.images)} images in one request; the limit is {settings.max_images}", "images")
    sources = []
    for i, ref in enumerate(request.images):
        field = f"images[{i}]"
        if ref.base64 is not None:
            source = ImageSource(field=f"{field}.base64", name=ref.name or field, data=_b64(ref.base64, field))
        elif ref.url is not None:
            source = _url_source(settings, ref.url, f"{field}.url")
        else:
            source = _item_source(items, ref.item or "", f"{field}.item")
        if ref.text is not None:
            source.text = ref.text
        sources.append(source)
    return sources


_B64_WHITESPACE = str.maketrans("", "", " \t\r\n\v\f")


def _b64(text: str, field: str) -> bytes:
    if text.startswith("data:"):  # a data URL from a browser: keep what follows the comma
        text = text.partition(",")[2]
    # MIME base64 breaks lines (76 characters, CRLF): ASCII whitespace goes, any other stray character is refused.
    text = text.translate(_B64_WHITESPACE)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", "the image is not valid base64", f"{field}.base64") from None


def _item_source(items: ItemLookup, item_id: str, field: str) -> ImageSource:
    path, text = items.item_image(item_id)  # raises a 404 ApiError for an unknown item
    return ImageSource(field=field, name=item_id, path=path, text=text, item=item_id)


def _url_source(settings: Settings, url: str, field: str) -> ImageSource:
    if not settings.allow_urls:
        raise ApiError(403, "urls_disabled", "this server does not fetch images from URLs (the operator can "
                       "enable it with --allow-urls); upload the image instead", field)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, "bad_url", "only http:// and https:// URLs with a host are accepted", field)
    return ImageSource(field=field, name=url, url=url)


# Decoding (runs in a worker thread) ---------------------------------------------------------------------


async def fetch_sources(sources: list[ImageSource], settings: Settings, limiter: Any = None) -> None:
    """Fetch a request's URL images before it takes a compute slot, so a slow URL holds only its own request,
    never the slots other requests wait for: in one worker thread, all within `url_timeout` together.
    `limiter` bounds the fetches of a worker at once: without it, 40 trickling URLs took every thread of
    the shared pool, and /v1/health and every other request waited ~10 s. The deadline starts now, so a
    request that waits for a fetch slot spends its own budget, not a new one."""
    if not any(source.url is not None and source.data is None for source in sources):
        return
    deadline = time.monotonic() + settings.url_timeout
    await anyio.to_thread.run_sync(_fetch_all, sources, settings, deadline, limiter=limiter)


def _fetch_all(sources: list[ImageSource], settings: Settings, deadline: float | None = None) -> None:
    deadline = time.monotonic() + settings.url_timeout if deadline is None else deadline
    for source in sources:
        if source.url is not None and source.data is None:
            if time.monotonic() >= deadline:
                raise ApiError(503, "busy", "too many URL fetches at once on this server; retry in a moment",
                               source.field, headers={"Retry-After": "1"})
            source.data = fetch_url(source.url, settings, source.field, deadline=deadline)


def decode_all(sources: list[ImageSource], settings: Settings, *, max_side: int | None = None) -> list[DecodedImage]:
    """Decode every image, or raise an ApiError naming the first bad one. URL sources should have been fetched by
    `fetch_sources` (outside the compute slots); any left are fetched here."""
    _fetch_all(sources, settings)
    _check_request_pixels(sources, settings)
    return [DecodedImage(source.name, decode_source(source, settings, max_side=max_side), source.text, source.item)
            for source in sources]


def _check_request_pixels(sources: list[ImageSource], settings: Settings) -> None:
    """Refuse a request whose images add up to more than `max_request_pixels`, from their headers (PIL reads the
    size without decoding): 16 images each under `max_pixels` cost 77 s of CPU and 3.9 GB decoded."""
    from PIL import Image

    total = 0
    for source in sources:
        what: Path | str | io.BytesIO | None = source.path
        if is_object_uri(what):
            continue  # measured at ingest; decoding still applies the per-image cap
        if what is None and source.data and sniff_image_type(source.data[:16]) is not None:
            what = io.BytesIO(source.data)
        if what is None:
            continue  # not an image: decoding says so
        try:
            with Image.open(what) as im:
                width, height = im.size
        except Exception:  # unreadable: decoding reports it, with its reason
            continue
        if width * height > settings.max_pixels:
            raise ApiError(413, "too_many_pixels", f"{width}x{height} = {width * height / 1e6:.1f} megapixels "
                           f"exceeds the cap of {settings.max_pixels / 1e6:.1f} MP per image", source.field)
        total += width * height
        if total > settings.max_request_pixels:
            raise ApiError(413, "too_many_pixels", f"the images of this request add up to more than "
                           f"{settings.max_request_pixels / 1e6:.0f} megapixels (the server's max_request_pixels): "
                           "send fewer or smaller images", source.field)


def decode_source(source: ImageSource, settings: Settings, *, max_side: int | None = None) -> np.ndarray:
    if source.path is not None:  # a workspace item: verified at ingest, still decoded under the same caps
        return _load(source.path, settings, source.field, max_side)
    data = source.data or b""
    if not data:
        raise ApiError(422, "empty_image", "the image is empty (0 bytes)", source.field)
    media_type = sniff_image_type(data[:16])
    if media_type is None:
        raise ApiError(415, "unsupported_media_type", "not a PNG, JPEG, GIF, WebP, BMP or TIFF image (the type is "
                       "read from the bytes, not from headers or file names)", source.field)
    return _load(data, settings, source.field, max_side)


def _load(what: bytes | Path | str, settings: Settings, field: str, max_side: int | None) -> np.ndarray:
    try:
        # Reduced to max_side in every format (the task needs no more); a client's bytes have every frame header
        # walked, as ingest's verify_image does, so the service refuses what ingest refuses.
        return load_image(what, max_pixels=settings.max_pixels, max_side=max_side, reduce=True,
                          check_frames=isinstance(what, bytes))
    except ImageError as e:
        status = 413 if e.code == "too_many_pixels" else 422
        raise ApiError(status, e.code, e.reason, field) from None
    except MemoryError:
        raise ApiError(413, "too_many_pixels", "the image is too large to decode", field) from None


def fetch_url(url: str, settings: Settings, field: str, *, deadline: float | None = None) -> bytes:
    """GET an image under a byte cap, following a few redirects, each target re-checked. The fetch ends by
    `deadline` (time.monotonic(); default `url_timeout` from now), whatever it is doing: connecting, following
    redirects, reading (a server trickling a byte every few seconds cannot hold it longer). Each connection goes
    to the address `_check_host` checked, never to a second DNS answer (rebinding)."""
    import httpx

    limit = settings.max_request_bytes
    deadline = time.monotonic() + settings.url_timeout if deadline is None else deadline
    # Checked between chunks; a read that stalls ends within a quarter of the budget, which bounds the overshoot.
    read_cap = max(1.0, settings.url_timeout / 4)
    try:
        # trust_env off: a proxy from the environment would resolve the host itself, past the check.
        with httpx.Client(follow_redirects=False, trust_env=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                target = httpx.URL(url)
                address = _check_host(url, settings, field)
                headers = {"Accept": ", ".join(ACCEPTED_TYPES), "Host": target.netloc.decode("ascii")}
                # https: the TLS name (SNI and certificate check) stays the host's, only the address is pinned.
                extensions = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise httpx.TimeoutException("deadline")
                timeout = httpx.Timeout(remaining, read=min(remaining, read_cap))
                with client.stream("GET", target.copy_with(host=address), headers=headers, extensions=extensions,
                                   timeout=timeout) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ApiError(422, "fetch_failed", f"the URL answered HTTP {response.status_code}", field)
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        if time.monotonic() > deadline:
                            raise httpx.TimeoutException("deadline")
                        size += len(chunk)
                        if size > limit:
                            raise ApiError(413, "image_too_large", f"the image at the URL exceeds "
                                           f"{limit / 2**20:.1f} MiB", field)
                        chunks.append(chunk)
                    return b"".join(chunks)
    except httpx.TimeoutException:
        raise ApiError(422, "fetch_failed", f"the URL did not deliver the image within {settings.url_timeout:g} s",
                       field) from None
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise ApiError(422, "fetch_failed", f"cannot fetch the URL: {type(e).__name__}", field) from None
    raise ApiError(422, "fetch_failed", f"more than {_MAX_REDIRECTS} redirects", field)


def _check_host(url: str, settings: Settings, field: str) -> str:
    """The address to connect to for `url`: its host resolved once. Loopback, private, link-local and reserved
    addresses are refused unless the operator allows them, so an enabled URL fetch cannot be turned against the
    server's own network; the caller connects to this address, so a second lookup (DNS rebinding) cannot."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ApiError(422, "bad_url", "only http:// and https:// URLs with a host are accepted", field)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ApiError(422, "fetch_failed", f"cannot resolve {parts.hostname}", field) from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise ApiError(422, "fetch_failed", f"cannot resolve {parts.hostname}", field)
    if not settings.allow_private_urls:
        for address in addresses:
            if not ipaddress.ip_address(address).is_global:
                raise ApiError(403, "url_not_allowed", f"{parts.hostname} resolves to a non-public address", field)
    return addresses[0]
