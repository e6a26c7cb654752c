"""A loopback HTTP server for the collector tests (imported by tests/test_collect*.py; holds no tests).

Each test gives it a `route(request) -> Reply` function; the server records every request (method,
path, JSON body) so tests can count exactly what a run fetched.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from curata.ingest.download import DownloadPolicy


def png(seed: int, size: int = 24) -> bytes:
    """A small PNG, different for every seed."""
    img = Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    img.putpixel((seed % size, 0), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fast_policy(**kw: Any) -> DownloadPolicy:
    """Short timeouts and waits, so retry paths run in milliseconds."""
    base: dict[str, Any] = {"retries": 2, "timeout": 1.0, "backoff": 0.01, "max_wait": 0.3, "concurrency": 4}
    base.update(kw)
    return DownloadPolicy(**base)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: dict[str, str]
    body: Any  # parsed JSON body of a POST, else None
    hit: int  # how many times this method + path + query was requested, this one included
    headers: dict[str, str]
    code: int = 0  # the status the server answered with


@dataclass
class Reply:
    code: int = 200
    body: bytes = b""
    ctype: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)
    send_only: int | None = None  # send this many bytes of the body, then close (truncation)

    @classmethod
    def json(cls, data: Any, **kw: Any) -> Reply:
        return cls(body=json.dumps(data).encode(), **kw)


class Server:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[Request] = []
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.route = lambda req: Reply(404, b"no route", "text/plain")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                key = f"{method} {self.path} {raw.decode(errors='replace')}"
                with server.lock:
                    server.hits[key] += 1
                    request = Request(method, parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                                      body, server.hits[key], {k.lower(): v for k, v in self.headers.items()})
                    server.log.append(request)
                reply = server.route(request)
                request.code = reply.code
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if reply.delay:
                        server.stopping.wait(reply.delay)
                    self.send_response(reply.code)
                    self.send_header("Content-Type", reply.ctype)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.send_only is not None:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(reply.body if reply.send_only is None else reply.body[: reply.send_only])
                    self.wfile.flush()
                    if reply.send_only is not None:
                        self.close_connection = True

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, method: str | None = None, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method) and r.path.startswith(prefix)]

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("server never saw the expected requests")
            time.sleep(0.02)
