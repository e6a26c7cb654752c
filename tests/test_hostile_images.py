"""Hostile images and URLs against the service: work amplification inside the limits (16-bit images, huge images
needed small, many large images in one request, thumbnails outside the compute slots), URL fetches that trickle
or rebind, a GIF damaged after its first frame, MIME base64. Each test failed before the fix it checks."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.imageio import ImageError, load_image, verify_image
from curata.service.errors import ApiError
from curata.service.images import fetch_url
from curata.service.settings import Settings
from test_service_support import COLOURS, assert_error, free_port, png_bytes


def encode(im: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def gradient16(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG (I;16) that compresses to almost nothing, however many pixels it has."""
    row = (np.arange(width, dtype=np.uint32) * 13 % 65536).astype(np.uint16)
    return encode(Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width)))), compress_level=1)


def peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """fn's result and the peak of what Python and numpy allocated while it ran."""
    tracemalloc.start()
    try:
        return fn(*args, **kwargs), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def client_for(workspace: Path, **settings):
    from fastapi.testclient import TestClient

    from curata.service.app import create_app

    return TestClient(create_app(Settings(workspace=workspace, preload=False, **settings)))


def upload(*images: bytes) -> list:
    return [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Two items: `s/big` (3000x2000 PNG) and `s/small` (64x64)."""
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.ingest.table import ColumnMap
    from curata.workspace import Workspace

    root = tmp_path_factory.mktemp("hostile-images")
    (root / "src").mkdir()
    y, x = np.mgrid[0:2000, 0:3000]
    big = np.stack([x * 255 // 3000, y * 255 // 2000, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    (root / "src" / "big.png").write_bytes(encode(Image.fromarray(big), compress_level=1))
    (root / "src" / "small.png").write_bytes(png_bytes(COLOURS["blue"]))
    pd.DataFrame({"id": ["big", "small"], "image": ["big.png", "small.png"], "text": ["", ""]}).to_csv(
        root / "src" / "labels.csv", index=False)
    ws = Workspace(root / "ws")
    ingest(root / "src", ws, IngestOptions(format="table", source_name="s", columns=ColumnMap()))
    return ws.root


# A. Work amplification ----------------------------------------------------------------------------------------


def test_sixteen_bit_images_are_scaled_without_a_float64_copy():
    """A 20 MP 16-bit PNG went through float64 and its temporaries: 480 MB for a 120 MB result."""
    width, height = 5000, 4000
    rgb, peak = peak_bytes(load_image, gradient16(width, height))
    assert rgb.shape == (height, width, 3)
    assert peak < 8 * width * height, f"{peak / 1e6:.0f} MB"  # was 24 bytes a pixel; the RGB result is 3 (x2)
    # The same 8-bit levels as the float64 formula, for every 16-bit value.
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.clip(levels / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(load_image(encode(Image.fromarray(levels)))[..., 0], expected)


def test_large_images_needed_small_are_decoded_reduced():
    """With max_side and reduce, a big PNG (8-bit or 16-bit) is shrunk before conversion, never copied full size."""
    y, x = np.mgrid[0:3000, 0:4000]
    rgb = np.stack([x * 255 // 4000, y * 255 // 3000, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(rgb), compress_level=1)
    small, peak = peak_bytes(load_image, data, max_side=512, reduce=True)
    assert 512 <= max(small.shape[:2]) < 1024 and small.shape[1] > small.shape[0]
    assert peak < 4000 * 3000, f"{peak / 1e6:.0f} MB"  # no full-size array (it would be 36 MB, copied twice)
    np.testing.assert_allclose(small.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).mean(0), atol=1.5)
    sixteen, peak = peak_bytes(load_image, gradient16(5000, 4000), max_side=512, reduce=True)
    assert 512 <= max(sixteen.shape[:2]) < 1024
    assert peak < 3 * 5000 * 4000, f"{peak / 1e6:.0f} MB"  # the 8-bit levels at full size, no more (was 24 B/px)
    # Without reduce, other callers (the feature engine) keep getting the full image.
    assert load_image(data, max_side=512).shape == (3000, 4000, 3)


def test_the_pixels_of_a_request_are_capped_together_before_decoding(tmp_path, monkeypatch):
    import curata.service.images as images

    assert Settings().max_request_pixels == 4 * Settings().max_pixels
    decoded: list[int] = []
    real_load = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: decoded.append(1) or real_load(*a, **k))
    nine_mp = encode(Image.new("L", (3000, 3000), 120))  # a few kB, 9 megapixels
    with client_for(tmp_path, max_pixels=10_000_000, max_request_pixels=20_000_000) as c:
        got = c.post("/v1/colours", files=upload(nine_mp, nine_mp, nine_mp))
        error = assert_error(got, 413, "too_many_pixels", "files[2]")
        assert "max_request_pixels" in error["message"]
        assert decoded == []  # refused from the headers: nothing was decoded
        assert c.post("/v1/colours", files=upload(nine_mp, nine_mp)).status_code == 200
        assert len(decoded) == 2


def test_thumbnails_take_a_compute_slot_and_decode_reduced(workspace, monkeypatch):
    import curata.service.images as images
    from curata.service.state import ServiceState

    computed: list[str] = []
    real_compute = ServiceState.compute

    async def compute(self, work, *args, **kwargs):
        computed.append(getattr(work, "__name__", repr(work)))
        return await real_compute(self, work, *args, **kwargs)

    shapes: list[tuple[int, ...]] = []
    real_load = images.load_image

    def load(*args, **kwargs):
        shapes.append((out := real_load(*args, **kwargs)).shape)
        return out

    monkeypatch.setattr(ServiceState, "compute", compute)
    monkeypatch.setattr(images, "load_image", load)
    with client_for(workspace) as c:
        got = c.get("/v1/items/s/big/thumbnail", params={"size": 128})
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(got.content)).size) == 128
        assert computed == ["thumbnail"]
        assert len(shapes) == 1 and 128 < max(shapes[0]) < 4 * 128  # 3000 px decoded reduced, not at full size
        assert c.get("/v1/items/s/big/thumbnail", params={"size": 128}).content == got.content
        assert computed == ["thumbnail"]  # a cached thumbnail needs no slot
        small = c.get("/v1/items/s/small/thumbnail", params={"size": 128})  # never upscaled, lossless
        assert small.headers["content-type"] == "image/png" and Image.open(io.BytesIO(small.content)).size == (64, 64)
        assert_error(c.get("/v1/items/s/nope/thumbnail"), 404, "unknown_item")


# B. URL fetches ---------------------------------------------------------------------------------------------------


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a 60-byte body sent one byte every 0.2 s (12 s in all), unless the client goes."""

    connected = threading.Event()

    def do_GET(self):
        type(self).connected.set()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "60")
        self.end_headers()
        try:
            for byte in (png_bytes() * 2)[:60]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server on a free loopback port, in threads; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def live_service(tmp_path) -> Iterator[str]:
    """The app under a real uvicorn on loopback, in this process: URL fetching on, one compute slot, 3 s fetches."""
    import uvicorn

    from curata.service.app import create_app

    settings = Settings(workspace=tmp_path, preload=False, allow_urls=True, allow_private_urls=True, url_timeout=3.0,
                        compute_slots=1)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_trickling_url_is_cut_at_the_deadline_and_holds_no_compute_slot(live_service):
    """A server sending a byte every few seconds held a request 40 s (the timeout was per read) and, as the fetch
    ran inside the compute slot, a concurrent colours request on an uploaded image waited as long."""
    _Trickle.connected.clear()
    with serve(_Trickle) as port, httpx.Client(base_url=live_service, timeout=30) as c:
        assert c.post("/v1/colours", files=upload(png_bytes())).status_code == 200  # warm: imports done
        result: dict[str, object] = {}
        done = threading.Event()

        def fetch() -> None:
            t = time.monotonic()
            with httpx.Client(base_url=live_service, timeout=30) as other:
                result["response"] = other.post("/v1/colours", json={"images": [{"url": f"http://127.0.0.1:{port}/x"}]})
            result["elapsed"] = time.monotonic() - t
            done.set()

        thread = threading.Thread(target=fetch)
        thread.start()
        assert _Trickle.connected.wait(10)
        got = c.post("/v1/colours", files=upload(png_bytes(COLOURS["green"])))
        assert got.status_code == 200 and got.json()["results"][0]["colour"] == "green"
        assert not done.is_set()  # answered while the URL was still trickling in
        thread.join(30)
    assert_error(result["response"], 422, "fetch_failed", "images[0].url")  # type: ignore[arg-type]
    assert "within 3 s" in result["response"].json()["error"]["message"]  # type: ignore[union-attr]
    assert result["elapsed"] < 3.0 + 1.5, result["elapsed"]


def test_many_trickling_urls_never_take_the_shared_thread_pool(live_service):
    """48 slow URLs at once took all 40 threads of the shared pool: /v1/health and every synchronous route waited
    ~10 s, and the requests queued behind the first 40 overran their deadline. Fetches have slots of their own
    now (8), and a request waiting for one spends its own deadline."""
    import asyncio

    async def attack() -> tuple[list[int], float, float]:
        async with httpx.AsyncClient(base_url=live_service, timeout=30,
                                     limits=httpx.Limits(max_connections=100)) as c:
            body = {"images": [{"url": f"http://127.0.0.1:{port}/x"}]}
            t = time.monotonic()
            slow = [asyncio.create_task(c.post("/v1/colours", json=body)) for _ in range(48)]
            await asyncio.sleep(1.0)  # every fetch has started or is waiting for a slot
            probe = time.monotonic()
            assert (await c.get("/v1/health")).status_code == 200
            assert (await c.get("/v1/items")).status_code == 200  # a synchronous route: the shared pool
            probed = time.monotonic() - probe
            answers = await asyncio.gather(*slow)
            return [r.status_code for r in answers], probed, time.monotonic() - t

    with serve(_Trickle) as port:
        codes, probed, total = asyncio.run(attack())
    assert probed < 1.0, probed
    assert set(codes) <= {422, 503} and codes.count(422) >= 8, codes  # cut at the deadline, or no slot in time
    assert total < 3.0 + 2.0, total  # every request ends by its own deadline (3 s), none waits a second one


class _Image(http.server.BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).hosts.append(self.headers.get("Host", ""))
        body = png_bytes(COLOURS["red"])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_fetch_connects_to_the_address_that_was_checked(monkeypatch):
    """The host was resolved for the check, then again by the HTTP client to connect: a rebinding DNS server
    could pass the check with a public address and have the fetch go to an internal one."""
    _Image.hosts = []
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host, *args, **kwargs):
        if host == "rebind.test":  # public for the check, then an address where nothing listens
            lookups.append(host)
            return real("8.8.8.8" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)
        if host == "8.8.8.8":  # the test's stand-in for that public host is the image server on loopback
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    with serve(_Image) as port:
        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        data = fetch_url(f"http://rebind.test:{port}/red.png", Settings(allow_urls=True, url_timeout=5.0), "url")
    assert data == png_bytes(COLOURS["red"])
    assert lookups == ["rebind.test"]  # resolved once, for the check
    assert _Image.hosts == [f"rebind.test:{port}"]  # the server still sees the name the client gave
    with pytest.raises(ApiError) as caught:  # the check itself still holds
        fetch_url("http://127.0.0.1:9/a.png", Settings(allow_urls=True), "url")
    assert caught.value.code == "url_not_allowed"


# C. Truncated GIF -------------------------------------------------------------------------------------------------


def frame_offsets(gif: bytes) -> list[int]:
    """Where each image descriptor of a GIF starts, walking its blocks."""
    pos = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    out = []
    while gif[pos] != 0x3B:
        if gif[pos] == 0x21:  # an extension: introducer, label, then sub-blocks
            pos += 2
        else:  # an image: descriptor, local colour table, LZW code size, then sub-blocks
            out.append(pos)
            packed = gif[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0) + 1
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    return out


def test_a_gif_cut_in_a_later_frame_is_refused_as_ingest_refuses_it(tmp_path):
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    second = frame_offsets(gif)[1]
    assert gif[second + 9] & 0x80  # it has a local colour table: cut in the middle of it
    cut = gif[: second + 10 + 100]
    with pytest.raises(ImageError) as caught:
        verify_image(cut)  # what ingest does
    with client_for(tmp_path) as c:
        assert_error(c.post("/v1/colours", files=upload(cut)), 422, caught.value.code, "files[0]")
        assert c.post("/v1/colours", files=upload(gif)).status_code == 200  # the whole file is fine


# D. MIME base64 ---------------------------------------------------------------------------------------------------


def test_base64_with_line_breaks_is_accepted_and_other_junk_is_not(tmp_path):
    mime = base64.encodebytes(png_bytes(COLOURS["yellow"])).decode().replace("\n", "\r\n")  # 76-character lines
    assert "\r\n" in mime.strip()
    with client_for(tmp_path) as c:
        for text in (mime, "data:image/png;base64,\n" + mime, mime.replace("\r\n", "\n  ")):
            got = c.post("/v1/colours", json={"images": [{"base64": text}]})
            assert got.status_code == 200, got.text
            assert got.json()["results"][0]["colour"] == "yellow"
        for junk in (mime[:40] + "*" + mime[40:], mime[:40] + "\x00" + mime[40:], mime + "=="):
            assert_error(c.post("/v1/colours", json={"images": [{"base64": junk}]}), 422, "invalid_base64",
                         "images[0].base64")
