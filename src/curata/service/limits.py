"""Request-size limit, enforced before any parsing: the declared Content-Length is checked first, then
the streamed bytes are counted (a chunked upload declares nothing), and the body is handed on only once
it is known to be within the limit."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from curata.service.errors import error_body


class BodyLimitMiddleware:
    """Pure ASGI middleware: a request whose body exceeds `max_bytes` gets a 413 without reaching the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _reply(send, 400, "bad_request", "the Content-Length header is not a number", "Content-Length")
            return
        if declared is not None and declared > self.max_bytes:
            await _reply(send, 413, "request_too_large", self._too_large(declared), "Content-Length")
            return
        # Read the whole body, counting: it is at most max_bytes, and the app parses it from memory.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _reply(send, 413, "request_too_large", self._too_large(size, streamed=True), None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = "more than " if streamed else ""
        return f"request body of {what}{size / 2**20:.1f} MiB exceeds the limit of {self.max_bytes / 2**20:.1f} MiB"


def _content_length(scope: Scope) -> int | None:
    """The declared length, None when absent, -1 when malformed."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


async def _reply(send: Send, status: int, code: str, message: str, field: str | None) -> None:
    body = json.dumps(error_body(code, message, field)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
