"""Hostile clients against the HTTP service: floods, deep JSON, slow and unfinished bodies, decompression-style
amplification, a slow URL, wrong-key floods and garbage HTTP, each measured for what it costs the server.

    python benchmarks/hostile.py [--workspace WS] [--attacks 1,2,3,4,5,6,7,8] [--no-huge-item]
                                 [--out benchmarks/results/hostile.json]

Protocol (printed with the results):
  * the workspace is a copy, in a temporary folder, of --workspace or (default) of a tiny one built the way the
    service tests build theirs (tests/test_service_support.py: 24 drawn images, features, a colour bundle, a
    cluster run, a joint search index); a 40 MP 16-bit PNG is added to the copy with `curata ingest`
    (collection `hostile-huge`) for the thumbnail attack, unless --no-huge-item.
  * one server: `curata serve` on a free 127.0.0.1 port, 1 worker, --api-key-file (a random key),
    --body-timeout 5, --allow-urls --allow-private-urls; started and stopped by this script (also on error).
    Legitimate requests send the key, from 127.0.0.1. Attackers that send wrong keys connect from other
    loopback addresses (127.0.0.2, 127.0.0.3; still to 127.0.0.1) so that the per-address wrong-key limit
    they trip does not lock the legitimate client out.
  * while each attack runs, a separate process polls GET /v1/health (a fresh connection each time, ~20 ms
    apart) and a thread samples the resident memory of the server and its children (/proc VmRSS, every
    50 ms). Per attack: worst and p99 health latency over the polls that overlap the attack window (at least
    1 s long), peak RSS growth over the RSS just before the attack, RSS still above it 1.5 s after the end
    ("left"), every status code the attack's requests got, and how many were 5xx (a 503 `busy`, with
    Retry-After, is load shed on purpose and counted apart). The poller waits for each
    answer (up to 10 s), so a stall is one slow poll among many fast ones: the p99 over polls understates it,
    the worst shows it, and the JSON adds the seconds spent in polls slower than 1 s ("health_stalled_s").
    Memory freed after a large decode in a worker thread mostly stays in that thread's glibc malloc arena:
    "left" after the 40 MP attacks is largely that retention (it levels off once every arena has held one
    decode), not necessarily a leak.
  * attacks (every loop bounded in count and in time):
      1   JSON flood: POST /v1/colours {"images":[{},{},...]} of 1 M entries (3 MB) and 2 M (6 MB): 413 fast.
      2   deep nesting: `[` x 100000, and {"images": `[` x 3000}, to /v1/colours, /v1/describe and
          /v1/search/image: 4xx, never 5xx.
      3   wrong key, big unfinished bodies: 30 sockets at once, X-API-Key wrong, Content-Length 19 MB, the
          body in 64 KB chunks every 0.1 s until the server answers or closes, or 10 s: 401 before the body.
      4   half-sent uploads, right key: 200 sockets at once, headers and 16 bytes of a 1 MB body, then
          nothing: 408 after the 5 s body timeout, RSS back afterwards.
      5a  amplification: 16 x the 40 MP 16-bit PNG (92 KB each) in one multipart POST /v1/colours: 413
          (pixels per request) or fast completion.
      5b  4 concurrent thumbnails (sizes 256, 384, 512, 1024: four cache misses) of the 40 MP item.
      5c  (beyond the brief) 4 x the 40 MP PNG in one request: 159.8 MP, just under the request cap of
          4 x max_pixels, so it is decoded: its time and memory.
      6   slow URL: a local HTTP server answers 200 and trickles an image 1 byte every 2 s; POST /v1/colours
          {"images":[{"url": ...}]} must fail at the server's URL deadline (10 s) while normal colour uploads,
          sent every 0.5 s meanwhile, stay fast.
      6b  (beyond the brief) 48 slow URLs at once: more than the 40 threads of the server's thread pool.
      7   wrong-key flood: 100 requests from one address (127.0.0.3), then one with the right key from that
          address and one from 127.0.0.1: how many 401 and 429.
      8   malformed HTTP: 50 garbage request lines / headers: JSON 400s.
  * the workspace is intact when the item count of /v1/items is the same before and after, /v1/ready is 200
    at the end and the server process is still running.
  * the load generator shares the machine's cores with the server: latencies are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from service import png_64, rss_mb  # noqa: E402
from test_service_support import Server, build_workspace  # noqa: E402  (the service tests' server and workspace)

LEGIT = "127.0.0.1"  # the legitimate client's address (and the only address connected to)
ATTACKER_A = "127.0.0.2"  # wrong keys with big bodies (attack 3)
ATTACKER_B = "127.0.0.3"  # wrong-key flood (attack 7)
BODY_TIMEOUT = 5.0
HUGE_SIDE = 6320  # 6320 x 6320 = 39.94 MP, just under the default max_pixels of 40 MP
HEALTH_SLOW_MS = 1000.0  # a health poll slower than this is a finding
RSS_LEFT_MB = 100.0  # memory still held this long after an attack is a finding
BOUNDARY = "hostileBoundary5d1f"


# Raw HTTP -------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no status line (reset, timeout, closed without answering)
    seconds: float
    content_type: str = ""
    error: str = ""
    body: bytes = b""

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "no answer")


def exchange(port: int, data: bytes, *, source: str = LEGIT, timeout: float = 20.0) -> Answer:
    """Send raw bytes to 127.0.0.1:port from `source` and read until the server closes (requests say
    Connection: close) or `timeout`; a send cut short by the server's answer is not an error."""
    started = time.perf_counter()
    received, error = b"", ""
    try:
        with socket.create_connection((LEGIT, port), timeout=timeout, source_address=(source, 0)) as s:
            try:
                s.sendall(data)
            except OSError as e:
                error = type(e).__name__
            try:
                while len(received) < 1 << 20 and (part := s.recv(65536)):
                    received += part
            except TimeoutError:
                error = "timeout"
            except OSError as e:
                error = type(e).__name__
    except OSError as e:
        error = type(e).__name__
    seconds = time.perf_counter() - started
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    content_type = next((line.split(b":", 1)[1].strip().decode("latin-1") for line in lines[1:]
                         if line.lower().startswith(b"content-type:")), "")
    return Answer(status, seconds, content_type, "" if status is not None else (error or "closed"), body)


def request(port: int, method: str, path: str, *, key: str | None, body: bytes = b"",
            content_type: str | None = None, extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if key is not None:
        head += f"X-API-Key: {key}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    parts = [(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
              "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def _status_line(reader: asyncio.StreamReader) -> tuple[int | None, float]:
    """The status of the first answer on a connection and when it came (None: closed without one)."""
    parts = (await reader.readline()).split(b" ", 2)
    return (int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None), time.monotonic()


# Monitoring: health polls in another process, RSS samples in a thread ---------------------------------------


def poll_health(port: int, stop: Any, conn: Any, period: float, limit_s: float) -> None:
    """(start, seconds, status) of GET /v1/health every `period` s until `stop` or `limit_s`; status 0 = none."""
    raw = f"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    samples: list[tuple[float, float, int]] = []
    end = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < end:
        started, status = time.monotonic(), 0
        try:
            with socket.create_connection((LEGIT, port), timeout=10) as s:
                s.sendall(raw)
                data = b""
                while part := s.recv(4096):
                    data += part
            status = int(data.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            pass
        samples.append((started, time.monotonic() - started, status))
        time.sleep(period)
    conn.send(samples)
    conn.close()


class Monitor:
    def __init__(self, port: int, pid: int, limit_s: float = 900.0):
        self.pid = pid
        ctx = multiprocessing.get_context("spawn")
        self._stop_poll = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._poller = ctx.Process(target=poll_health, args=(port, self._stop_poll, send, 0.02, limit_s),
                                   daemon=True)
        self._poller.start()
        send.close()
        self.rss: list[tuple[float, float]] = []
        self.health: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss.append((time.monotonic(), rss_mb(self.pid)))
            self._stop.wait(0.05)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._stop_poll.set()
        with contextlib.suppress(EOFError, OSError):
            if self._recv.poll(20):
                self.health = self._recv.recv()
        self._poller.join(5)
        if self._poller.is_alive():
            self._poller.terminate()
            self._poller.join(5)
        self._sampler.join(5)

    def peak_rss(self, t0: float, t1: float) -> float:
        inside = [mb for t, mb in self.rss if t0 <= t <= t1]
        return max(inside) if inside else rss_mb(self.pid)

    def health_in(self, t0: float, t1: float) -> list[tuple[float, int]]:
        """(ms, status) of the polls that overlap [t0, t1]."""
        return [(s * 1000, status) for start, s, status in self.health if start < t1 and start + s > t0]


# Attacks ------------------------------------------------------------------------------------------------


@dataclass
class Target:
    port: int
    key: str
    client: httpx.Client  # the legitimate client: right key, from 127.0.0.1
    huge_png: bytes
    huge_item: str | None


@dataclass
class Result:
    """What an attack function reports: the outcome of each hostile request, whether it went as expected, and
    a line of detail; `legit` holds statuses of legitimate requests made meanwhile (counted for 5xx)."""

    outcomes: list[str]
    expected: bool
    detail: str
    legit: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _times(answers: list[Answer]) -> str:
    s = [a.seconds for a in answers]
    return f"{min(s):.2f}-{max(s):.2f} s" if s else "-"


def json_flood(t: Target) -> Result:
    answers = []
    for n in (1_000_000, 2_000_000):
        body = b'{"images":[' + b"{}," * (n - 1) + b"{}]}"
        answers.append(exchange(t.port, request(t.port, "POST", "/v1/colours", key=t.key, body=body,
                                                content_type="application/json"), timeout=60))
    ok = all(a.status == 413 and a.seconds < 2 for a in answers)
    return Result([a.outcome for a in answers], ok, "answered in " + ", ".join(f"{a.seconds:.2f} s" for a in answers))


def deep_nesting(t: Target) -> Result:
    answers = []
    for body in (b"[" * 100_000, b'{"images":' + b"[" * 3000):
        for path in ("/v1/colours", "/v1/describe", "/v1/search/image"):
            answers.append(exchange(t.port, request(t.port, "POST", path, key=t.key, body=body,
                                                    content_type="application/json"), timeout=30))
    ok = all(a.status is not None and 400 <= a.status < 500 for a in answers)
    return Result([a.outcome for a in answers], ok, f"answered in {_times(answers)}")


def wrong_key_big_bodies(t: Target, sockets: int = 30, size: int = 19 * 2**20, limit: float = 10.0) -> Result:
    async def one(i: int) -> tuple[str, float, int]:
        try:
            reader, writer = await asyncio.open_connection(LEGIT, t.port, local_addr=(ATTACKER_A, 0))
        except OSError as e:
            return type(e).__name__, 0.0, 0
        head = (f"POST /v1/colours HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nX-API-Key: wrong-{i}-{t.key[:4]}x\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {size}\r\n\r\n").encode()
        chunk = b"\0" * 65536
        sent, started = 0, time.monotonic()
        writer.write(head)
        status = asyncio.create_task(_status_line(reader))
        try:
            while sent < size and time.monotonic() - started < limit:
                await asyncio.wait({status}, timeout=0.1)
                if status.done():
                    break
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except OSError:  # answered and closed
            pass
        try:
            code, at = await asyncio.wait_for(status, timeout=max(0.1, limit - (time.monotonic() - started)))
        except (TimeoutError, OSError, ValueError) as e:
            code, at = None, time.monotonic()
            outcome = "timeout" if isinstance(e, TimeoutError) else type(e).__name__
        else:
            outcome = str(code) if code is not None else "closed"
        writer.close()
        return outcome, at - started, sent

    async def run() -> list[tuple[str, float, int]]:
        return await asyncio.gather(*(one(i) for i in range(sockets)))

    done = asyncio.run(run())
    outcomes = [d[0] for d in done]
    worst_s, most_sent = max(d[1] for d in done), max(d[2] for d in done)
    ok = all(o in ("401", "429") for o in outcomes) and worst_s < 1.0 and most_sent <= 2 * 65536
    return Result(outcomes, ok, f"answered {worst_s:.2f} s at worst after the headers; at most "
                  f"{most_sent / 1024:.0f} KB of body sent before the answer",
                  extra={"worst_answer_s": round(worst_s, 3), "most_body_bytes_sent": most_sent})


def half_sent_uploads(t: Target, sockets: int = 200) -> Result:
    async def one(i: int) -> tuple[str, float]:
        try:
            reader, writer = await asyncio.open_connection(LEGIT, t.port)
        except OSError as e:
            return type(e).__name__, 0.0
        head = (f"POST /v1/colours HTTP/1.1\r\nHost: 127.0.0.1:{t.port}\r\nX-API-Key: {t.key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 1000000\r\n\r\n")
        started = time.monotonic()
        writer.write(head.encode() + f"--{BOUNDARY}\r\n".encode()[:16])
        try:
            code, at = await asyncio.wait_for(_status_line(reader), timeout=BODY_TIMEOUT + 8)
            outcome = str(code) if code is not None else "closed"
        except (TimeoutError, OSError, ValueError) as e:
            outcome, at = ("timeout" if isinstance(e, TimeoutError) else type(e).__name__), time.monotonic()
        writer.close()
        return outcome, at - started

    async def run() -> list[tuple[str, float]]:
        return await asyncio.gather(*(one(i) for i in range(sockets)))

    done = asyncio.run(run())
    seconds = [d[1] for d in done]
    ok = all(d[0] == "408" for d in done) and min(seconds) >= BODY_TIMEOUT - 0.5 and max(seconds) < BODY_TIMEOUT + 3
    return Result([d[0] for d in done], ok, f"answered after {min(seconds):.2f}-{max(seconds):.2f} s")


def big_pixels_upload(t: Target, copies: int) -> Result:
    body = multipart([(f"huge{i}.png", t.huge_png) for i in range(copies)])
    a = exchange(t.port, request(t.port, "POST", "/v1/colours", key=t.key, body=body,
                                 content_type=f"multipart/form-data; boundary={BOUNDARY}"), timeout=120)
    code = ""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        code = f" ({json.loads(a.body)['error']['code']})" if a.status != 200 else ""
    ok = (a.status == 413 and a.seconds < 5) or (a.status == 200 and a.seconds < 10 * copies / 4)
    return Result([a.outcome], ok, f"{copies} x {HUGE_SIDE}x{HUGE_SIDE} 16-bit PNG, {len(body) / 2**20:.1f} MB body: "
                  f"{a.outcome}{code} in {a.seconds:.2f} s", extra={"seconds": round(a.seconds, 3)})


def huge_thumbnails(t: Target) -> Result:
    if t.huge_item is None:
        return Result([], True, "skipped (no 40 MP item in the workspace)")
    path = f"/v1/items/{quote(t.huge_item, safe='/')}/thumbnail"

    def one(size: int) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            r = t.client.get(path, params={"size": size}, timeout=120)
            return str(r.status_code), time.perf_counter() - started
        except httpx.HTTPError as e:
            return type(e).__name__, time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(one, (256, 384, 512, 1024)))
    worst = max(d[1] for d in done)
    return Result([d[0] for d in done], all(d[0] == "200" for d in done) and worst < 20,
                  f"4 cache misses, all done in {worst:.2f} s (one compute slot: one at a time)",
                  extra={"worst_s": round(worst, 3)})


class SlowImageServer:
    """A local HTTP server that answers 200 with an image it sends 1 byte every `interval` s (each answer ends
    when the client goes away, after `limit` s, or on close())."""

    def __init__(self, body: bytes, interval: float = 2.0, limit: float = 30.0):
        stop = self.stop = threading.Event()
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                end = time.monotonic() + limit
                for i in range(len(body)):
                    if stop.is_set() or time.monotonic() > end:
                        break
                    try:
                        self.wfile.write(body[i: i + 1])
                        self.wfile.flush()
                    except OSError:
                        break
                    stop.wait(interval)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        class Httpd(ThreadingHTTPServer):
            request_queue_size = 128

        self.httpd = Httpd((LEGIT, 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/slow.png"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def slow_urls(t: Target, count: int) -> Result:
    slow = SlowImageServer(png_64())
    small = png_64()
    body = json.dumps({"images": [{"url": slow.url}]}).encode()
    raw = request(t.port, "POST", "/v1/colours", key=t.key, body=body, content_type="application/json")
    uploads: list[tuple[str, float]] = []
    try:
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(exchange, t.port, raw, timeout=40) for _ in range(count)]
            time.sleep(1.0)
            end = time.monotonic() + 30
            while not all(f.done() for f in futures) and time.monotonic() < end and len(uploads) < 60:
                started = time.perf_counter()
                try:
                    status = str(t.client.post("/v1/colours", files={"files": ("a.png", small, "image/png")},
                                               timeout=30).status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                uploads.append((status, time.perf_counter() - started))
                time.sleep(0.5)
            answers = [f.result() for f in futures]
    finally:
        slow.close()
    codes = []
    for a in answers:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            codes.append(json.loads(a.body)["error"]["code"])
    worst_upload = max((u[1] for u in uploads), default=0.0)
    # 422 fetch_failed at the deadline, or 503 busy (with Retry-After) for a request that found every fetch
    # slot taken until its own deadline: load shed on purpose, not a failure of the server.
    ok = (all(a.status in (422, 503) and 9 <= a.seconds <= 14 for a in answers) and bool(uploads)
          and all(u[0] == "200" for u in uploads) and worst_upload < 1.0)
    return Result([a.outcome for a in answers], ok,
                  f"URL request{'s' if count > 1 else ''} failed after {_times(answers)} "
                  f"({', '.join(sorted(set(codes))) or 'no error code'}); {len(uploads)} normal uploads meanwhile: "
                  f"{dict(Counter(u[0] for u in uploads))}, worst {worst_upload:.2f} s; "
                  f"{slow.connections} fetches reached the slow server",
                  legit=[u[0] for u in uploads],
                  extra={"upload_worst_s": round(worst_upload, 3), "uploads": len(uploads),
                         "url_seconds": [round(a.seconds, 2) for a in answers]})


def wrong_key_flood(t: Target, n: int = 100) -> Result:
    answers = [exchange(t.port, request(t.port, "GET", "/v1/items?limit=1", key=f"wrong-{i}"), source=ATTACKER_B,
                        timeout=10) for i in range(n)]
    same = exchange(t.port, request(t.port, "GET", "/v1/items?limit=1", key=t.key), source=ATTACKER_B)
    other = exchange(t.port, request(t.port, "GET", "/v1/items?limit=1", key=t.key))
    seen = Counter(a.outcome for a in answers)
    ok = set(seen) <= {"401", "429"} and seen["401"] <= 30 and other.status == 200
    return Result([a.outcome for a in answers], ok,
                  f"401 x {seen['401']}, 429 x {seen['429']}; then the right key from the same address: "
                  f"{same.outcome}, from 127.0.0.1: {other.outcome}",
                  legit=[other.outcome],
                  extra={"right_key_same_address": same.outcome, "right_key_other_address": other.outcome})


def garbage_lines() -> list[bytes]:
    fixed = [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / FTP/1.1\r\n\r\n",
             b"\x00\x01\x02\x03\x04\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
             b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
             b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n",
             b"GET /v1/health HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", b"G\x7fT / HTTP/1.1\r\n\r\n",
             b"GET /\x00 HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n", b"GET  /  HTTP/1.1\r\n\r\n",
             b"GET / HTTP/1.1\rHost: x\r\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
             b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
             b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
             b"GET / HTTP/1.1\r\n Host: folded\r\n\r\n", b"\xff\xfe\xfd / HTTP/1.1\r\n\r\n",
             b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n"]
    rng = np.random.default_rng(8)
    random_lines = [bytes(rng.integers(33, 127, int(rng.integers(4, 200)), dtype=np.uint8)) + b"\r\n\r\n"
                    for _ in range(15)]
    binary = [bytes(rng.integers(0, 256, 64, dtype=np.uint8)).replace(b"\r", b".").replace(b"\n", b".")
              + b"\r\n\r\n" for _ in range(15)]
    return (fixed + random_lines + binary)[:50]


def malformed_http(t: Target) -> Result:
    answers = [exchange(t.port, raw, timeout=5) for raw in garbage_lines()]
    json_400 = sum(a.status == 400 and a.content_type.startswith("application/json") for a in answers)
    others = [(i, a.outcome, a.content_type) for i, a in enumerate(answers)
              if not (a.status == 400 and a.content_type.startswith("application/json"))]
    return Result([a.outcome for a in answers], not others,
                  f"JSON 400 x {json_400}" + (f"; others (line #, outcome, type): {others[:6]}" if others else ""),
                  extra={"json_400": json_400, "others": others})


ATTACKS: list[tuple[str, str, Callable[[Target], Result]]] = [
    ("1", "JSON flood 1M/2M {}", json_flood),
    ("2", "deep nesting [ x100k", deep_nesting),
    ("3", "wrong key, 19 MB slow bodies x30", wrong_key_big_bodies),
    ("4", "half-sent uploads x200", half_sent_uploads),
    ("5a", "16 x 40 MP 16-bit PNG upload", lambda t: big_pixels_upload(t, 16)),
    ("5b", "4 thumbnails of a 40 MP item", huge_thumbnails),
    ("5c", "4 x 40 MP in one request (extra)", lambda t: big_pixels_upload(t, 4)),
    ("6", "slow URL + uploads", lambda t: slow_urls(t, 1)),
    ("6b", "48 slow URLs at once (extra)", lambda t: slow_urls(t, 48)),
    ("7", "wrong-key flood x100", wrong_key_flood),
    ("8", "malformed HTTP x50", malformed_http),
]


# Setup, the run, the report ---------------------------------------------------------------------------


def huge_png() -> bytes:
    """A 6320 x 6320 16-bit greyscale PNG, two flat halves: ~90 KB on disk, 80 MB of samples."""
    from PIL import Image

    arr = np.full((HUGE_SIDE, HUGE_SIDE), 30000, np.uint16)
    arr[:, : HUGE_SIDE // 2] = 12000
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=9)  # uint16 2-D: mode I;16
    return buf.getvalue()


def make_workspace(tmp: Path, source: Path | None) -> Path:
    workspace = tmp / "ws"
    if source is not None:
        shutil.copytree(source, workspace, ignore=shutil.ignore_patterns("cache", "reports"))
        return workspace
    built = build_workspace(tmp / "built")
    shutil.copytree(built, workspace, ignore=shutil.ignore_patterns("cache", "reports"))
    return workspace


def ingest_huge(workspace: Path, png: bytes, tmp: Path) -> bool:
    folder = tmp / "huge"
    folder.mkdir()
    (folder / "huge16.png").write_bytes(png)
    done = subprocess.run([sys.executable, "-m", "curata.cli", "ingest", str(folder), "-w", str(workspace),
                           "--collection", "hostile-huge", "--source-name", "hostile", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        print(f"the 40 MP item was not ingested ({done.stderr.strip()[-300:]}): attack 5b is skipped")
    return done.returncode == 0


def item_count(client: httpx.Client) -> int | None:
    try:
        r = client.get("/v1/items", params={"limit": 1}, timeout=30)
        return int(r.json()["total"]) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def run_attack(number: str, name: str, attack: Callable[[Target], Result], target: Target, monitor: Monitor
               ) -> dict[str, Any]:
    time.sleep(0.5)  # let the previous attack's connections close
    base = rss_mb(monitor.pid)
    t0 = time.monotonic()
    try:
        result = attack(target)
    except Exception as e:  # the benchmark's own failure: reported in the row, the other attacks still run
        result = Result([], False, f"attack failed in the client: {type(e).__name__}: {e}")
    t1 = time.monotonic()
    time.sleep(max(0.0, t0 + 1.0 - t1))  # at least 1 s of health polls per attack
    t_end = max(t1, t0 + 1.0)
    time.sleep(1.5)
    left = rss_mb(monitor.pid) - base
    statuses = Counter(result.outcomes)
    # 503 is the server shedding load on purpose (busy, with Retry-After): counted apart from real 5xx errors.
    five = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")
    five += sum(s.isdigit() and int(s) >= 500 and s != "503" for s in result.legit)
    shed = statuses.get("503", 0)
    row = {"attack": number, "name": name, "requests": len(result.outcomes), "statuses": dict(statuses),
           "five_xx": five, "shed_503": shed, "expected": result.expected, "detail": result.detail,
           "seconds": round(t1 - t0, 2),
           "rss_before_mb": round(base, 1), "peak_rss_growth_mb": round(monitor.peak_rss(t0, t_end) - base, 1),
           "rss_left_mb": round(left, 1), "window": (t0, t_end), **result.extra}
    print(f"  {number:>3} {name}: {dict(statuses)} in {t1 - t0:.1f} s - {result.detail}", flush=True)
    return row


def add_health(rows: list[dict[str, Any]], monitor: Monitor) -> None:
    for row in rows:
        polls = monitor.health_in(*row.pop("window"))
        ms = np.array([p[0] for p in polls]) if polls else np.zeros(1)
        row["health_polls"] = len(polls)
        row["health_failures"] = sum(status != 200 for _, status in polls)
        row["health_worst_ms"] = round(float(ms.max()), 1)
        row["health_p99_ms"] = round(float(np.percentile(ms, 99)), 1)
        row["health_stalled_s"] = round(float(ms[ms > HEALTH_SLOW_MS].sum()) / 1000, 2)


def outcome_text(row: dict[str, Any]) -> str:
    codes = " ".join(f"{s}x{n}" for s, n in sorted(row["statuses"].items()))
    return f"{'ok' if row['expected'] else 'UNEXPECTED'}: {codes or '-'}"


def findings(rows: list[dict[str, Any]]) -> list[str]:
    found = []
    for r in rows:
        tag = f"attack {r['attack']} ({r['name']})"
        if r["five_xx"]:
            found.append(f"{tag}: {r['five_xx']} responses were 5xx")
        if r["health_worst_ms"] > HEALTH_SLOW_MS:
            found.append(f"{tag}: /v1/health took up to {r['health_worst_ms']:.0f} ms (p99 {r['health_p99_ms']:.0f})")
        if r["health_failures"]:
            found.append(f"{tag}: {r['health_failures']} health polls failed or were not 200")
        if r["rss_left_mb"] > RSS_LEFT_MB:
            found.append(f"{tag}: RSS still {r['rss_left_mb']:.0f} MB above its level before, 1.5 s after the end")
        if not r["expected"]:
            found.append(f"{tag}: not as expected: {r['detail']}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workspace", type=Path, help="Workspace to copy and serve (default: a tiny one built "
                        "as the service tests build theirs).")
    parser.add_argument("--attacks", default=",".join(a[0] for a in ATTACKS), help="Comma-separated attacks to run.")
    parser.add_argument("--no-huge-item", action="store_true", help="Do not ingest the 40 MP item (skips 5b).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile.json")
    args = parser.parse_args()
    chosen = {a.strip() for a in args.attacks.split(",")}
    unknown = chosen - {a[0] for a in ATTACKS}
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="curata-bench-hostile-"))
    server = monitor = client = None
    rows: list[dict[str, Any]] = []
    try:
        workspace = make_workspace(tmp, args.workspace)
        png = huge_png()
        huge = not args.no_huge_item and ingest_huge(workspace, png, tmp)
        key = secrets.token_urlsafe(24)
        key_file = tmp / "api-key"
        key_file.write_text(key)
        server = Server(workspace, "--api-key-file", str(key_file), "--body-timeout", f"{BODY_TIMEOUT:g}",
                        "--allow-urls", "--allow-private-urls", log=tmp / "server.log").wait(headers={"X-API-Key": key})
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60)
        huge_item = None
        if huge:
            page = client.get("/v1/items", params={"collection": "hostile-huge", "limit": 1}).json()
            huge_item = page["items"][0]["id"] if page.get("items") else None
        before = item_count(client)
        target = Target(server.port, key, client, png, huge_item)
        monitor = Monitor(server.port, server.proc.pid)
        time.sleep(1.0)  # the poller process starting
        print(f"server {server.url} (pid {server.proc.pid}), {before} items, RSS {rss_mb(server.proc.pid):.0f} MB; "
              f"set-up {time.monotonic() - started:.0f} s", flush=True)
        for number, name, attack in ATTACKS:
            if number in chosen:
                rows.append(run_attack(number, name, attack, target, monitor))
        after = item_count(client)
        try:
            ready = client.get("/v1/ready", timeout=30).status_code
        except httpx.HTTPError:
            ready = None
        alive = server.proc.poll() is None
        monitor.close()
        add_health(rows, monitor)
        log = server.log.read_text(errors="replace")[-20000:]
    finally:
        if monitor is not None:
            monitor.close()
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    intact = before is not None and before == after and ready == 200 and alive
    tracebacks = log.count("Traceback")
    print(f"\nserver: 1 worker, API key, --body-timeout {BODY_TIMEOUT:g}, --allow-urls --allow-private-urls; "
          f"health polled every ~20 ms; RSS of the server process tree every 50 ms")
    header = (f"{'attack':<38} | {'requests':>8} | {'5xx':>3} | {'503 shed':>8} | {'worst health ms':>15} | "
              f"{'p99 health ms':>13} | "
              f"{'peak RSS +MB':>12} | {'RSS left MB':>11} | outcome (status codes seen)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['attack'] + ' ' + r['name']:<38} | {r['requests']:>8} | {r['five_xx']:>3} | {r['shed_503']:>8} | "
              f"{r['health_worst_ms']:>15.1f} | {r['health_p99_ms']:>13.1f} | {r['peak_rss_growth_mb']:>12.1f} | "
              f"{r['rss_left_mb']:>11.1f} | {outcome_text(r)}")
    total_5xx = sum(r["five_xx"] for r in rows)
    total_shed = sum(r["shed_503"] for r in rows)
    print(f"hostile cases run: {len(rows)} ({sum(r['requests'] for r in rows)} hostile requests); 5xx errors: "
          f"{total_5xx}; 503 load shed on purpose: {total_shed}; "
          f"losses: {'none, workspace intact' if intact else 'WORKSPACE NOT INTACT'} (items {before} -> {after}, "
          f"/v1/ready {ready}, server {'running' if alive else 'gone'}); tracebacks in the server log: {tracebacks}")
    found = findings(rows)
    for line in found:
        print(f"finding: {line}")
    if not found:
        print("no findings: every attack answered as expected, health stayed under "
              f"{HEALTH_SLOW_MS:.0f} ms and memory came back")
    print(f"total time {time.monotonic() - started:.0f} s; figures are indicative (the attackers share the cores)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "workspace": str(args.workspace or "tiny built workspace (tests/test_service_support.py)"),
        "server": {"workers": 1, "body_timeout_s": BODY_TIMEOUT, "api_key": True, "allow_urls": True,
                   "allow_private_urls": True},
        "cpus": os.cpu_count(), "rows": rows, "findings": found,
        "totals": {"cases": len(rows), "hostile_requests": sum(r["requests"] for r in rows), "five_xx": total_5xx,
                   "shed_503": total_shed, "workspace_intact": intact, "items_before": before, "items_after": after,
                   "ready_status": ready,
                   "server_alive": alive, "server_log_tracebacks": tracebacks},
        "server_log_tail": log[-4000:] if tracebacks or total_5xx else "",
        "seconds": round(time.monotonic() - started, 1)}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
