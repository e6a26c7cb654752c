"""Request bodies, bounded before any parsing: the declared Content-Length is checked first, then the
streamed bytes are counted (a chunked upload declares nothing) against a per-request limit, a deadline
for the whole body and a cap on the bytes all requests of this worker hold at once. A JSON body's shape
(how many values, how deep) is counted on its raw bytes, off the event loop, before anything parses it:
a 3 MB body of a million empty objects would otherwise cost seconds of parsing and gigabytes."""

from __future__ import annotations

import json
import re

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from curata.service.errors import error_body
from curata.service.settings import Settings

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_shape_problem(body: bytes, max_values: int, max_depth: int) -> str | None:
    """Why a JSON body is too big to parse (too many values, too deep), or None. Linear in the body size
    and all in C: escapes are dropped, then every other quote-delimited piece is a string and is skipped."""
    outside = b"".join(_ESCAPE.sub(b"", body).split(b'"')[0::2])
    values = outside.count(b",") + outside.count(b"[") + outside.count(b"{")
    if values > max_values:
        return f"the JSON body holds more than {max_values} values"
    depth = deepest = 0
    for char in _NOT_BRACKET.sub(b"", outside):  # at most 2 * max_values brackets
        depth += 1 if char in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > max_depth:
        return f"the JSON body is nested {deepest} levels deep; the limit is {max_depth}"
    return None


class BodyLimitMiddleware:
    """Pure ASGI middleware: a body that is too large (413), too slow (408), would push this worker past
    its in-flight byte cap (503), or is JSON of an unreasonable shape (413) never reaches the app."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.max_bytes = settings.max_request_bytes
        self.inflight = 0  # bytes of request bodies held by this worker now (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await reply(send, 400, "bad_request", "the Content-Length header is not a number", "Content-Length")
            return
        if declared is not None and declared > self.max_bytes:
            await reply(send, 413, "request_too_large", self._too_large(declared), "Content-Length")
            return
        held = 0
        try:
            chunks: list[bytes] = []
            failure: tuple[int, str, str] | None = None
            with anyio.move_on_after(self.settings.body_timeout) as deadline:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    if held + len(body) > self.max_bytes:
                        failure = (413, "request_too_large", self._too_large(held + len(body), streamed=True))
                        break
                    if self.inflight + len(body) > self.settings.max_inflight_bytes:
                        failure = (503, "busy", "the server holds too many uploads at once; retry in a moment")
                        break
                    self.inflight += len(body)
                    held += len(body)
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
            if deadline.cancelled_caught:
                failure = (408, "request_timeout", f"the request body did not arrive within "
                           f"{self.settings.body_timeout:g} s")
            if failure is not None:
                await reply(send, failure[0], failure[1], failure[2], None,
                            {"retry-after": "1"} if failure[0] == 503 else None)
                return
            body = b"".join(chunks)
            del chunks
            if body and _is_json(scope):
                problem = await anyio.to_thread.run_sync(json_shape_problem, body, self.settings.max_json_values,
                                                         self.settings.max_json_depth)
                if problem is not None:
                    await reply(send, 413, "json_too_large", problem, None)
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # later calls: wait for the disconnect, as the server would

            await self.app(scope, replay, send)
        finally:
            self.inflight -= held

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = "more than " if streamed else ""
        return f"request body of {what}{size / 2**20:.1f} MiB exceeds the limit of {self.max_bytes / 2**20:.1f} MiB"


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (the first), decoded as latin-1 as HTTP allows; None when absent."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _is_json(scope: Scope) -> bool:
    media_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _content_length(scope: Scope) -> int | None:
    """The declared length, None when absent, -1 when malformed."""
    value = header(scope, b"content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return -1
    return n if n >= 0 else -1


async def reply(send: Send, status: int, code: str, message: str, field: str | None,
                headers: dict[str, str] | None = None) -> None:
    """An error in the one JSON shape, straight from middleware; the connection is closed after it (the
    unread rest of a body must not be taken for the next request)."""
    body = json.dumps(error_body(code, message, field)).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})
