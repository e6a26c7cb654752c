"""Shared by the service tests: a small real workspace (images drawn here, ingested with the real pipeline,
features computed, a colour bundle trained, a cluster run) and a real uvicorn server process on 127.0.0.1.

Imported by test_service.py, test_service_schema.py and test_web.py; its own tests check the helpers.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

COLOURS = {"red": (210, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 210), "yellow": (235, 210, 30)}
SHAPES = ("circle", "square", "stripes")
PER_COLOUR = 6


def draw(colour: tuple[int, int, int], shape: str, seed: int, size: int = 64) -> Image.Image:
    """A noisy flat-colour picture with a white shape: enough texture for palettes and clusters."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, np.int16) + rng.integers(-25, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    if shape == "circle":
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    elif shape == "square":
        mask = (abs(yy - size / 2) < size / 6) & (abs(xx - size / 2) < size / 6)
    else:
        mask = (xx // 8) % 4 == 0
    arr[mask] = 245
    return Image.fromarray(arr, "RGB")


def build_workspace(root: Path) -> Path:
    """Images + a CSV table -> ingest -> color_stats, palette -> a colour bundle `colour` -> a cluster run ->
    a joint search space `joint` and its index. Built once per test session (the marker file says it is
    complete)."""
    ws_dir = root / "ws"
    if (root / ".complete").exists():
        return ws_dir
    from curata.cluster import cluster_workspace
    from curata.features.engine import compute, make_extractor
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.ingest.table import ColumnMap
    from curata.tasks.runner import TrainOptions, run
    from curata.workspace import Workspace

    source = root / "source"
    (source / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(PER_COLOUR):
            shape = SHAPES[i % len(SHAPES)]
            file = f"images/{name}-{i}.png"
            draw(rgb, shape, seed=100 * c + i).save(source / file)
            tone = "warm" if name in ("red", "yellow") else "cool"
            rows.append({"id": f"{name}-{i}", "image": file, "text": f"a {name} picture with a white {shape}",
                         "label": name, "tags": f"shape={shape};tone={tone}"})
    with open(source / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ws = Workspace(ws_dir)
    report = ingest(source, ws, IngestOptions(format="table", source_name="demo", collection="swatches",
                                              columns=ColumnMap(tags="tags")))
    assert report.summary()["ok"] == len(rows), report.summary()
    for extractor in ("color_stats", "palette"):
        compute(make_extractor(extractor), ws, workers=1)
    # logreg: the reference SVM's grid search would take most of the build time on a busy machine.
    run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], model="logreg", folds=3,
                         name="colour"))
    cluster_workspace(ws, ["color_stats"], "kmeans", k=4, map_method="none", png=False, html=False,
                      target=None, name="colour-k4")
    try:  # search: a small joint text-image space and its index (when the search module is installed)
        from curata.search.joint import JointOptions, train_joint
        from curata.search.searcher import build_index
    except ImportError:
        pass
    else:
        train_joint(ws, JointOptions(epochs=3, dim=32, hidden=0, variants=1, patience=2, name="joint"))
        build_index(ws)
    (root / ".complete").write_text("ok")
    return ws_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`curata serve` in a subprocess on a free loopback port; `stop()` ends it (and only it)."""

    def __init__(self, workspace: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "CURATA_API_KEY": "", **(env or {})}
        full_env.pop("CURATA_SERVICE_SETTINGS", None)
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "curata.cli", "serve", "--workspace", str(workspace), "--port", str(self.port),
             "--log-level", "warning", *args], env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 240.0, headers: dict[str, str] | None = None) -> Server:
        """Until /v1/ready says the models are loaded (generous: test machines can be very busy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")[-2000:] if self.log else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {text}")
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=2.0, headers=headers).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server on {self.url} was not ready within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not subprocess.DEVNULL:
            self._out.close()


def service_workspace(tmp_path_factory) -> Path:
    """The workspace every service test module shares (built once per test session)."""
    return build_workspace(tmp_path_factory.getbasetemp() / "service-ws")


def running_server(tmp_path_factory, log_name: str) -> Iterator[Server]:
    """Body of a module fixture (`yield from`): a server on the shared workspace, stopped at the end."""
    srv = Server(service_workspace(tmp_path_factory), log=tmp_path_factory.mktemp(log_name) / "server.log").wait()
    try:
        yield srv
    finally:
        srv.stop()


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """Every error has the same shape, a JSON type, and no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["field"] == field, body
    return body["error"]


def raw_request(port: int, head: bytes, chunks) -> bytes:
    """Send a request over a bare socket (so the body can be larger than what is ever read) and return
    whatever the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:  # the server answered and closed: what matters is its answer
            pass
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except OSError:
            pass
    return data


def png_bytes(colour=(200, 30, 30), size=(64, 64), shape: str = "circle") -> bytes:
    import io

    buf = io.BytesIO()
    image = draw(colour, shape, seed=7, size=max(size))
    if size[0] != size[1]:
        image = image.resize(size)
    image.save(buf, "PNG")
    return buf.getvalue()


def test_drawn_images_differ_by_colour_and_shape():
    red, blue = np.asarray(draw(COLOURS["red"], "circle", 1)), np.asarray(draw(COLOURS["blue"], "circle", 1))
    assert red[..., 0].mean() > red[..., 2].mean() and blue[..., 2].mean() > blue[..., 0].mean()
    assert not np.array_equal(np.asarray(draw(COLOURS["red"], "square", 1)), red)


def test_sniffing_reads_bytes_not_names():
    from curata.service.images import sniff_image_type

    assert sniff_image_type(png_bytes()[:16]) == "image/png"
    assert sniff_image_type(b"\xff\xd8\xff\xe0" + b"\0" * 12) == "image/jpeg"
    assert sniff_image_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"<svg xmlns='http://www.w3.org/2000/svg'>") is None
    assert sniff_image_type(b"%PDF-1.7") is None
