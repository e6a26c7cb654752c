"""Downloader tests against a real HTTP server on 127.0.0.1 (no mocks of the client, no internet)."""

from __future__ import annotations

import contextlib
import email.utils
import io
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from curata.ingest.download import (
    DownloadError,
    DownloadPolicy,
    _retry_after_seconds,
    _sniff,
    download_all,
    fetch_json,
    resolve_url,
    url_key,
)


def _png(size: int = 16, noise: bool = False) -> bytes:
    if noise:  # incompressible, so the file is big enough to split for Range tests
        img = Image.frombytes("RGB", (size, size), random.Random(0).randbytes(size * size * 3))
    else:
        img = Image.new("RGB", (size, size), (200, 30, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


PNG = _png()
BIG_PNG = _png(64, noise=True)
JPEG = _jpeg()
HTML = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>captcha</body></html>"
ETAG = '"v1"'


class Server:
    """A loopback server with one route per failure mode; records every request it receives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, dict[str, str]]] = []
        self.hits: Counter[str] = Counter()
        self.inflight = 0
        self.max_inflight = 0
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.log.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up (timeouts)
                    server.route(self, self.path, hit)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def requests_to(self, prefix: str) -> list[dict[str, str]]:
        with self.lock:
            return [headers for path, headers in self.log if path.startswith(prefix)]

    @staticmethod
    def send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str, **headers: str) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        if "length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            if name != "length":
                h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(body)

    def send_range(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        """Honour `Range: bytes=N-` (and If-Range) like a static file server."""
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if_range = h.headers.get("If-Range")
        if match and (if_range is None or if_range == ETAG):
            start = int(match.group(1))
            if start >= len(body):
                self.send(h, 416, b"", "text/plain", Content_Range=f"bytes */{len(body)}")
                return
            self.send(
                h,
                206,
                body[start:],
                "image/png",
                Content_Range=f"bytes {start}-{len(body) - 1}/{len(body)}",
                ETag=ETAG,
            )
        else:
            self.send(h, 200, body, "image/png", ETag=ETAG, Accept_Ranges="bytes")

    def route(self, h: BaseHTTPRequestHandler, path: str, hit: int) -> None:
        send = self.send
        if path.startswith("/png/") or path.startswith("/ipfs/"):
            send(h, 200, PNG, "image/png")
        elif path == "/jpeg-octet":
            send(h, 200, JPEG, "application/octet-stream")
        elif path == "/html-as-png":
            send(h, 200, HTML, "image/png")
        elif path == "/text":
            send(h, 200, b"hello world", "text/plain")
        elif path == "/missing":
            send(h, 404, b"not here", "text/plain")
        elif path.startswith("/flaky500/"):
            send(h, 500, b"oops", "text/plain") if hit == 1 else send(h, 200, PNG, "image/png")
        elif path.startswith("/ratelimit/"):
            if hit == 1:
                send(h, 429, b"slow down", "text/plain", Retry_After="0")
            else:
                send(h, 200, PNG, "image/png")
        elif path == "/always503":
            send(h, 503, b"down", "text/plain")
        elif path == "/slow":
            self.stopping.wait(3.0)  # far longer than the test timeout
            send(h, 200, PNG, "image/png")
        elif path == "/big":
            send(h, 200, PNG + bytes(5000), "image/png")
        elif path == "/big-nolen":  # HTTP/1.0, no Content-Length: the body ends when the connection closes
            send(h, 200, PNG + bytes(5000), "image/png", length="none")
        elif path == "/truncated":  # promises 2048 bytes, sends 512, closes
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", "2048")
            h.end_headers()
            h.wfile.write((PNG + bytes(2048))[:512])
        elif path.startswith("/range/"):
            self.send_range(h, BIG_PNG)
        elif path.startswith("/trunc-then-range/"):
            if hit == 1:  # first half only, then the connection drops
                h.send_response(200)
                h.send_header("Content-Type", "image/png")
                h.send_header("Content-Length", str(len(BIG_PNG)))
                h.send_header("ETag", ETAG)
                h.end_headers()
                h.wfile.write(BIG_PNG[: len(BIG_PNG) // 2])
            else:
                self.send_range(h, BIG_PNG)
        elif path.startswith("/inflight/"):
            with self.lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            time.sleep(0.15)
            with self.lock:
                self.inflight -= 1
            send(h, 200, PNG, "image/png")
        elif path == "/json/good":
            send(h, 200, b'{"name": "Fidenza #1", "attributes": [1, 2]}', "application/json")
        elif path == "/json/bad":
            send(h, 200, b'{"name": "Fidenza #1",', "application/json")
        elif path == "/json/html":
            send(h, 200, HTML, "text/html")
        else:
            send(h, 404, b"no route", "text/plain")


@pytest.fixture(scope="module")
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.stopping.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def fast(**kw: object) -> DownloadPolicy:
    """Test policy: tiny backoff so retries cost milliseconds."""
    defaults: dict[str, object] = {
        "concurrency": 4,
        "retries": 2,
        "timeout": 3.0,
        "backoff": 0.01,
        "max_wait": 0.5,
    }
    defaults.update(kw)
    return DownloadPolicy(**defaults)  # type: ignore[arg-type]


def one(url: str, cache: Path, policy: DownloadPolicy | None = None):
    [result] = download_all([url], cache, policy or fast())
    return result


def _dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return port


# ------------------------------------------------------------------------------------------ resolve_url


def test_resolve_url() -> None:
    gws = ("https://a.example/ipfs/", "https://b.example/ipfs")
    assert resolve_url("https://x.org/a.png?s=1", gws) == ["https://x.org/a.png?s=1"]
    assert resolve_url("ipfs://QmAbC/1.png", gws) == [
        "https://a.example/ipfs/QmAbC/1.png",
        "https://b.example/ipfs/QmAbC/1.png",
    ]
    assert resolve_url("ipfs://ipfs/QmAbC/1.png", gws[:1]) == ["https://a.example/ipfs/QmAbC/1.png"]
    assert resolve_url("ipfs://bafyX", gws[:1]) == ["https://a.example/ipfs/bafyX"]
    for bad in (
        "ftp://x.org/a.png",
        "ipfs://",
        "data:image/png;base64,AAAA",
        "just-a-name.png",
        "http:///a.png",
    ):
        with pytest.raises(ValueError):
            resolve_url(bad, gws)


def test_sniff_and_retry_after() -> None:
    assert _sniff(PNG) == "image/png"
    assert _sniff(JPEG) == "image/jpeg"
    assert _sniff(HTML) == "text/html"
    assert _sniff(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>') == "image/svg+xml"
    assert _sniff(b"hello") is None
    assert _retry_after_seconds("7") == 7.0
    assert _retry_after_seconds("garbage") is None
    assert _retry_after_seconds(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    future = _retry_after_seconds(email.utils.formatdate(time.time() + 120, usegmt=True))
    assert future is not None and 100 < future <= 120


# --------------------------------------------------------------------------------------- download_all


def test_mixed_batch_order_duplicates_and_cache(server: Server, tmp_path: Path) -> None:
    tok = uuid.uuid4().hex
    urls = [
        f"{server.base}/png/{tok}",
        f"{server.base}/jpeg-octet",
        f"{server.base}/html-as-png",
        f"{server.base}/missing",
        f"{server.base}/png/{tok}",  # duplicate
        f"{server.base}/text",
        "ftp://example.org/a.png",
    ]
    seen: list[str] = []
    results = download_all(urls, tmp_path, fast(), progress=lambda r: seen.append(r.url))
    assert [r.url for r in results] == urls
    assert sorted(seen) == sorted(urls)  # once per input item
    png, jpeg, html, missing, dup, text, ftp = results

    assert png.status == "ok" and png.content_type == "image/png" and png.n_bytes == len(PNG)
    assert png.path is not None and png.path.read_bytes() == PNG and png.path.suffix == ".png"
    assert png.path.name.startswith(url_key(urls[0]))
    assert dup == png
    assert len(server.requests_to(f"/png/{tok}")) == 1  # duplicates fetched once

    assert jpeg.status == "ok" and jpeg.content_type == "image/jpeg" and jpeg.path is not None
    assert jpeg.path.suffix == ".jpg"
    assert html.status == "error" and html.reason == "content type text/html is not an image (served as image/png)"
    assert missing.status == "error" and missing.reason == "HTTP 404 Not Found"
    assert len(server.requests_to("/missing")) == 1  # 404 is not retried
    assert text.status == "error" and text.reason is not None and text.reason.startswith("content type text/plain")
    assert ftp.status == "error" and ftp.reason == "unsupported URL scheme 'ftp'"
    assert not list(tmp_path.glob("*.part"))  # nothing half-written left behind

    n_before = len(server.log)
    again = download_all(urls, tmp_path, fast())
    ok_urls = {urls[0], urls[1]}
    assert [r.status for r in again if r.url in ok_urls] == ["cached", "cached", "cached"]
    cached_png = again[0]
    assert cached_png.path == png.path and cached_png.content_type == "image/png"
    assert cached_png.n_bytes == len(PNG)
    # Only the failures are asked again; a batch of finished downloads makes no request at all.
    assert len(server.log) - n_before == 3
    n_before = len(server.log)
    download_all([urls[0], urls[1], urls[4]], tmp_path, fast())
    assert len(server.log) == n_before


def test_retries_500_and_429(server: Server, tmp_path: Path) -> None:
    tok = uuid.uuid4().hex
    flaky, limited = f"{server.base}/flaky500/{tok}", f"{server.base}/ratelimit/{tok}"
    results = download_all([flaky, limited], tmp_path, fast(max_wait=5.0, backoff=0.01))
    assert [r.status for r in results] == ["ok", "ok"]
    assert len(server.requests_to(f"/flaky500/{tok}")) == 2
    assert len(server.requests_to(f"/ratelimit/{tok}")) == 2


def test_always_503_gives_up(server: Server, tmp_path: Path) -> None:
    before = len(server.requests_to("/always503"))
    r = one(f"{server.base}/always503", tmp_path, fast(retries=2))
    assert r.status == "error" and r.reason == "HTTP 503 Service Unavailable after 3 attempts"
    assert len(server.requests_to("/always503")) - before == 3


def test_timeout(server: Server, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = one(f"{server.base}/slow", tmp_path, fast(timeout=0.3, retries=1))
    assert r.status == "error" and r.reason == "timed out after 2 attempts"
    assert time.monotonic() - t0 < 2.5


def test_size_cap_while_streaming(server: Server, tmp_path: Path) -> None:
    policy = fast(max_bytes=1000)
    with_len, no_len = download_all([f"{server.base}/big", f"{server.base}/big-nolen"], tmp_path, policy)
    assert with_len.status == "error"
    assert with_len.reason == f"Content-Length {(len(PNG) + 5000) / 1024:.1f} KB exceeds size cap of 1000 bytes"
    assert no_len.status == "error" and no_len.reason == "body exceeds size cap of 1000 bytes"
    assert len(server.requests_to("/big")) == 2  # one each: the cap is not retried
    assert not list(tmp_path.glob("*.part"))


def test_truncated_body(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/truncated"
    r = one(url, tmp_path, fast(retries=1))
    assert r.status == "error" and r.reason == "truncated body: got 512 of 2048 bytes after 2 attempts"
    # The partial body is kept so a later run can resume it; it never takes the final name.
    part = tmp_path / f"{url_key(url)}.part"
    assert part.stat().st_size == 512
    assert not (tmp_path / f"{url_key(url)}.json").exists()


def test_resume_from_existing_part(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/range/{uuid.uuid4().hex}"
    have = len(BIG_PNG) // 3
    (tmp_path / f"{url_key(url)}.part").write_bytes(BIG_PNG[:have])  # as left by a killed run
    r = one(url, tmp_path)
    assert r.status == "ok" and r.path is not None and r.path.read_bytes() == BIG_PNG
    [request] = server.requests_to(url.removeprefix(server.base))
    assert request["range"] == f"bytes={have}-"
    assert not list(tmp_path.glob("*.part*"))


def test_resume_after_dropped_connection(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/trunc-then-range/{uuid.uuid4().hex}"
    r = one(url, tmp_path)
    assert r.status == "ok" and r.path is not None and r.path.read_bytes() == BIG_PNG
    first, second = server.requests_to(url.removeprefix(server.base))
    assert "range" not in first
    assert second["range"] == f"bytes={len(BIG_PNG) // 2}-" and second["if-range"] == ETAG


def test_stale_part_is_restarted_when_server_ignores_range(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/png/{uuid.uuid4().hex}"
    (tmp_path / f"{url_key(url)}.part").write_bytes(b"garbage from an older run")
    r = one(url, tmp_path)
    assert r.status == "ok" and r.path is not None and r.path.read_bytes() == PNG


def test_complete_part_416_restarts(server: Server, tmp_path: Path) -> None:
    # Killed after the last byte but before the rename: Range asks past the end, the server says 416.
    url = f"{server.base}/range/{uuid.uuid4().hex}"
    (tmp_path / f"{url_key(url)}.part").write_bytes(BIG_PNG)
    r = one(url, tmp_path)
    assert r.status == "ok" and r.path is not None and r.path.read_bytes() == BIG_PNG
    first, second = server.requests_to(url.removeprefix(server.base))
    assert first["range"] == f"bytes={len(BIG_PNG)}-" and "range" not in second


def test_incomplete_cache_entry_is_fetched_again(server: Server, tmp_path: Path) -> None:
    url = f"{server.base}/png/{uuid.uuid4().hex}"
    first = one(url, tmp_path)
    assert first.path is not None
    first.path.unlink()  # sidecar without its file: not a finished download
    again = one(url, tmp_path)
    assert again.status == "ok" and again.path is not None and again.path.read_bytes() == PNG
    assert len(server.requests_to(url.removeprefix(server.base))) == 2


def test_progress_error_propagates(server: Server, tmp_path: Path) -> None:
    def boom(_: object) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke"):
        download_all([f"{server.base}/png/{uuid.uuid4().hex}"], tmp_path, fast(), progress=boom)


def test_ipfs_gateway_fallback(server: Server, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}/ipfs/"
    policy = fast(ipfs_gateways=(dead, f"{server.base}/ipfs/"), retries=0)
    cid = "bafy" + uuid.uuid4().hex
    a, b = download_all([f"ipfs://{cid}/1.png", f"ipfs://ipfs/{cid}/2.png"], tmp_path, policy)
    assert a.status == "ok" and b.status == "ok" and a.content_type == "image/png"
    assert len(server.requests_to(f"/ipfs/{cid}/1.png")) == 1
    assert len(server.requests_to(f"/ipfs/{cid}/2.png")) == 1
    assert a.path != b.path  # cached under the original ipfs:// URL


def test_all_gateways_failing_reports_each(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}/ipfs/"
    r = one("ipfs://bafyNOPE/x.png", tmp_path, fast(ipfs_gateways=(dead,), retries=1))
    assert r.status == "error" and r.reason is not None
    assert r.reason.startswith("connection failed") and r.reason.endswith("after 2 attempts")


def test_concurrency_is_bounded(server: Server, tmp_path: Path) -> None:
    urls = [f"{server.base}/inflight/{i}" for i in range(6)]
    results = download_all(urls, tmp_path, fast(concurrency=2))
    assert all(r.status == "ok" for r in results)
    assert server.max_inflight == 2


# ----------------------------------------------------------------------------------------- fetch_json


def test_fetch_json(server: Server) -> None:
    assert fetch_json(f"{server.base}/json/good", fast()) == {"name": "Fidenza #1", "attributes": [1, 2]}
    with pytest.raises(DownloadError) as bad:
        fetch_json(f"{server.base}/json/bad", fast())
    assert bad.value.reason.startswith("invalid JSON (") and "content type application/json" in bad.value.reason
    with pytest.raises(DownloadError) as html:
        fetch_json(f"{server.base}/json/html", fast())
    assert html.value.reason.endswith("content type text/html, body looks like text/html)")
    with pytest.raises(DownloadError) as missing:
        fetch_json(f"{server.base}/missing", fast())
    assert missing.value.reason == "HTTP 404 Not Found" and missing.value.url.endswith("/missing")
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        fetch_json("ftp://example.org/x.json", fast())


def test_fetch_json_ipfs_and_size_cap(server: Server) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}/ipfs/"
    policy = fast(ipfs_gateways=(dead, f"{server.base}/json/"), retries=0)
    assert fetch_json("ipfs://good", policy)["name"] == "Fidenza #1"
    with pytest.raises(DownloadError, match="exceeds size cap of 10 bytes"):
        fetch_json(f"{server.base}/json/good", fast(max_bytes=10))
