"""Load on the HTTP service over loopback: throughput and latency of colour naming and of text search
(item listing when the workspace has no search index), with 1 and 2 uvicorn workers.

    python benchmarks/service.py [--workspace WS] [--requests 1500] [--seconds 20] [--concurrency 16]
                                 [--workers 1,2] [--out benchmarks/results/service.json]

Protocol (printed with the results):
  * the server is `curata serve` on a free 127.0.0.1 port, started and stopped by this script, with
    --workers N; 20 warm-up requests per scenario are not counted.
  * colour naming: POST /v1/colours with one 64x64 PNG (noisy, 2 colours), closed loop with
    --concurrency clients (a minimal asyncio HTTP/1.1 client, so that the load
    generator takes little CPU from the server), up to --requests requests or --seconds, whichever first.
    Target >= 200 req/s.
  * search: GET /v1/search/text with 120 distinct short queries in turn, open loop at half the colour target
    (100 req/s) for the same bounds; the target is p99 <= 100 ms at that load. Without a search index
    in the workspace, GET /v1/items (a filtered page of 24) stands in and the table says so.
  * memory: resident set size of the server and its worker processes after the load (/proc).
  * the load generator shares the machine's cores with the server: figures are indicative, and on a
    machine shared with other work they are lower bounds.
Default workspace: a copy of benchmarks/workspaces/demo in a temporary folder (the cached one is never
written to), where `curata joint train --epochs 5` and `curata index build` make the search index.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGET_RPS = 200.0
TARGET_P99_MS = 100.0
# 120 distinct short queries (colour x motif), cycled: every request encodes its text afresh
QUERIES = [f"{c} {m}" for c in ("red", "blue", "yellow", "green", "dark", "white", "pink", "orange", "purple",
                                 "grey", "bright", "pale") for m in ("circle", "stripes", "picture", "square",
                                                                     "pattern", "lines", "waves", "dots",
                                                                     "particles", "grid")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_64() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = np.clip(np.array([200, 40, 40]) + rng.integers(-20, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    arr[16:48, 16:48] = (240, 240, 240)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, StopIteration):
            continue
    return total / 1024


class ServerProcess:
    def __init__(self, workspace: Path, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CURATA_API_KEY": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "curata.cli", "serve", "-w", str(workspace), "--port",
                                      str(self.port), "--workers", str(workers), "--log-level", "warning"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for load generation.

    httpx costs ~1 ms of CPU per request, which on a 2-core machine is taken from the server being
    measured; pre-encoded requests and a status-line + Content-Length parse cost a few tens of µs.
    Connections are pooled (one per concurrent request) and reopened when the server closes one."""

    def __init__(self, url: str, size: int):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.slots = asyncio.Semaphore(size)  # at most `size` requests (and connections) in flight
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, raw: bytes) -> int:
        """Send one pre-encoded request; the response status (the body is read and dropped)."""
        async with self.slots:
            reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(raw)
                status = int((await reader.readline()).split(b" ", 2)[1])
                length, chunked, close = 0, False, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                    elif name == b"connection":
                        close = b"close" in value.lower()
                if chunked:
                    while (size := int((await reader.readline()).strip(), 16)):
                        await reader.readexactly(size + 2)
                    await reader.readline()
                else:
                    await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            if close:
                writer.close()
            else:
                self.idle.append((reader, writer))
            return status

    async def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


def encode_get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def encode_multipart(path: str, host: str, field: str, filename: str, content: bytes, mime: str) -> bytes:
    boundary = "curataBenchBoundary7MA4YWxk"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {mime}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def closed_loop(url: str, requests: list[bytes], n: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request as soon as the last one is answered."""
    latencies: list[float] = []
    errors = 0
    count = 0
    http = RawHttp(url, concurrency)
    for i in range(20):  # warm-up
        await call(http, requests[i % len(requests)])

    async def worker() -> None:
        nonlocal count, errors
        while count < n and time.perf_counter() < deadline:
            i = count
            count += 1
            t = time.perf_counter()
            ok = await call(http, requests[i % len(requests)])
            latencies.append(time.perf_counter() - t)
            errors += not ok

    cpu, started = time.process_time(), time.perf_counter()
    deadline = started + seconds  # after the warm-up, which may be slow on a busy machine
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await http.close()
    return {**summarise(latencies, errors, elapsed), "client_cpu_s": round(time.process_time() - cpu, 2)}


async def open_loop(url: str, requests: list[bytes], rate: float, n: int, seconds: float) -> dict[str, Any]:
    """Requests sent on a fixed schedule (rate per second), whatever the answers' speed: the latency a
    client sees at that load."""
    latencies: list[float] = []
    errors = 0
    total = min(n, int(rate * seconds))
    http = RawHttp(url, 256)
    for i in range(20):
        await call(http, requests[i % len(requests)])

    async def one(i: int, at: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        t = time.perf_counter()
        ok = await call(http, requests[i % len(requests)])
        latencies.append(time.perf_counter() - t)
        errors += not ok

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i, started + i / rate) for i in range(total)))
    elapsed = time.perf_counter() - started
    await http.close()
    return {**summarise(latencies, errors, elapsed), "offered_rps": rate,
            "client_cpu_s": round(time.process_time() - cpu, 2)}


def summarise(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


async def call(http: RawHttp, raw: bytes) -> bool:
    """One request; a failure (reset connection under overload...) counts as an error, not the end."""
    try:
        return await http.send(raw) == 200
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        return False


def scenarios(url: str, image: bytes, search: bool) -> tuple[list[bytes], list[bytes]]:
    """Pre-encoded requests: colour naming of one PNG, and text searches over QUERIES (or item pages)."""
    host = url.removeprefix("http://")
    colours = [encode_multipart("/v1/colours", host, "files", "a.png", image, "image/png")]
    if search:
        second = [encode_get(f"/v1/search/text?q={quote(q)}&k=10", host) for q in QUERIES]
    else:
        second = [encode_get(f"/v1/items?limit=24&offset={o}", host) for o in range(0, 480, 24)]
    return colours, second


def build_search_index(workspace: Path) -> None:
    """A joint space and its index in the (copied) workspace, with the product's own commands."""
    for command in (["joint", "train", "--epochs", "5"], ["index", "build"]):
        done = subprocess.run([sys.executable, "-m", "curata.cli", *command, "-w", str(workspace), "--quiet"],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(f"no search index ({' '.join(command)} failed: {done.stderr.strip()[-300:]})")
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workspace", type=Path, help="Workspace to serve (default: a copy of the cached demo).")
    parser.add_argument("--requests", type=int, default=1500, help="Most requests per scenario.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Most seconds per scenario.")
    parser.add_argument("--concurrency", type=int, default=16, help="Concurrent clients (closed loop).")
    parser.add_argument("--workers", default="1,2", help="Comma-separated uvicorn worker counts to compare.")
    parser.add_argument("--no-index", action="store_true", help="Do not build a search index in the demo copy "
                        "(the search scenario becomes item listing).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service.json")
    args = parser.parse_args()

    tmp = None
    workspace = args.workspace
    if workspace is None:
        cached = ROOT / "benchmarks" / "workspaces" / "demo"
        from curata.workspace import Workspace

        if not Workspace(cached).exists:
            sys.exit(f"no workspace: give --workspace, or create {cached} (see benchmarks/features.py)")
        tmp = Path(tempfile.mkdtemp(prefix="curata-bench-service-"))
        workspace = tmp / "ws"
        shutil.copytree(cached, workspace, ignore=shutil.ignore_patterns("cache", "reports"))
    if tmp is not None and not args.no_index:
        build_search_index(workspace)
    search = (workspace / "index").is_dir() and any((workspace / "index").glob("*/search.json"))
    second = "text search" if search else "item listing (no search index)"
    rows = []
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            server = ServerProcess(workspace, workers)
            try:
                server.wait()
                colour_run, search_run = scenarios(server.url, png_64(), search)
                colour = asyncio.run(closed_loop(server.url, colour_run, args.requests, args.seconds,
                                                 args.concurrency))
                peak = asyncio.run(closed_loop(server.url, search_run, args.requests, args.seconds,
                                               args.concurrency))
                half = asyncio.run(open_loop(server.url, search_run, TARGET_RPS / 2, args.requests, args.seconds))
                rows.append({"workers": workers, "colours": colour, "search_peak": peak, "search_at_half": half,
                             "rss_mb": round(rss_mb(server.proc.pid), 1)})
            finally:
                server.stop()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"workspace: {args.workspace or 'copy of benchmarks/workspaces/demo'}; second scenario: {second}")
    print(f"{'workers':>7} | {'colours req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'search req/s':>12} "
          f"{'p50 ms':>7} {'p99 ms':>7} | {'at 100 req/s: p50':>17} {'p99 ms':>7} | {'RSS MB':>7}")
    for r in rows:
        c, p, h = r["colours"], r["search_peak"], r["search_at_half"]
        print(f"{r['workers']:>7} | {c['rps']:>13} {c['p50_ms']:>7} {c['p99_ms']:>7} | {p['rps']:>12} "
              f"{p['p50_ms']:>7} {p['p99_ms']:>7} | {h['p50_ms']:>17} {h['p99_ms']:>7} | {r['rss_mb']:>7}")
    if len(rows) >= 2:
        print(f"colour throughput, {rows[-1]['workers']} workers / {rows[0]['workers']}: "
              f"{rows[-1]['colours']['rps'] / max(rows[0]['colours']['rps'], 1e-9):.2f}x")
    best = max(rows, key=lambda r: r["colours"]["rps"])
    print(f"targets: colours >= {TARGET_RPS:.0f} req/s: {best['colours']['rps']} "
          f"({'met' if best['colours']['rps'] >= TARGET_RPS else 'not met'}); "
          f"{second} p99 <= {TARGET_P99_MS:.0f} ms at 100 req/s: "
          f"{min(r['search_at_half']['p99_ms'] for r in rows)} ms")
    print("figures are indicative: the load generator shares the cores with the server (and with other work)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"workspace": str(args.workspace or "demo copy"), "second_scenario": second,
                                    "requests": args.requests, "seconds": args.seconds,
                                    "concurrency": args.concurrency, "cpus": os.cpu_count(), "rows": rows,
                                    "targets": {"colours_rps": TARGET_RPS, "search_p99_ms": TARGET_P99_MS}},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
