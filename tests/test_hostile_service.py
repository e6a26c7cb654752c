"""The service as a hostile client and a flaky machine would treat it: JSON floods and deep nesting, slow
and unauthenticated bodies, other sites acting with the user's session, Host-header rebinding, wrong-key
floods, a workspace changing or breaking under a running server, odd item ids, malformed HTTP. Each test
failed before the hardening it checks."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from curata.service.limits import BodyLimitMiddleware, json_shape_problem
from curata.service.settings import Settings
from test_service_support import (
    PER_COLOUR,
    Server,
    assert_error,
    png_bytes,
    raw_request,
    running_server,
    service_workspace,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "hostile-log")


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def own_workspace(tmp_path_factory, tmp_path) -> Path:
    """A private copy of the shared service workspace, for tests that change or break it."""
    copy = tmp_path / "ws"
    shutil.copytree(service_workspace(tmp_path_factory), copy)
    return copy


def health_latencies(url: str, stop: threading.Event) -> list[float]:
    """Poll /v1/health until `stop`; the latencies, in seconds."""
    out: list[float] = []

    def poll() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get(f"{url}/v1/health")
                out.append(time.perf_counter() - t)
                time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    stop.thread = thread  # type: ignore[attr-defined]
    return out


# JSON floods and nesting ---------------------------------------------------------------------------------


def test_json_shape_is_counted_on_raw_bytes():
    assert json_shape_problem(b'{"images": [{"base64": "abc"}]}', 64, 8) is None
    # Brackets, commas and escaped quotes inside strings are text, not structure.
    assert json_shape_problem(b'{"text": "[[[[,,,,{{{{ \\" ]]]] \\\\"}', 4, 2) is None
    assert "more than 100 values" in json_shape_problem(b'{"images": [' + b"{}," * 200 + b"{}]}", 100, 8)
    assert "nested 40 levels" in json_shape_problem(b"[" * 40 + b"]" * 40, 100, 32)
    # Linear in the size even for a body of escaped quotes (a regex over strings would be quadratic here).
    hostile = b'"' + b'\\"' * 2_000_000
    t = time.perf_counter()
    assert json_shape_problem(hostile, 10, 10) is None
    assert time.perf_counter() - t < 2.0


@pytest.mark.slow
def test_a_json_flood_never_freezes_the_worker(server, client):
    """1M empty image objects (3 MB) used to block the event loop ~20 s and grow RSS by 2 GB."""
    flood = b'{"images": [' + b"{}," * 999_999 + b"{}]}"
    stop = threading.Event()
    latencies = health_latencies(server.url, stop)
    time.sleep(0.2)
    try:
        for path in ("/v1/colours", "/v1/predict/colour", "/v1/describe", "/v1/search/image", "/v1/describe/items"):
            t = time.perf_counter()
            got = client.post(path, content=flood, headers={"Content-Type": "application/json"})
            assert_error(got, 413, "json_too_large")
            assert time.perf_counter() - t < 5.0
    finally:
        stop.set()
        stop.thread.join()  # type: ignore[attr-defined]
    assert latencies and max(latencies) < 1.0, max(latencies)
    # Just over the image limit but within the value budget: counted before pydantic builds anything.
    few = {"images": [{"base64": "AA=="}] * 17}
    assert_error(client.post("/v1/colours", json=few), 413, "too_many_images", "images")


@pytest.mark.parametrize("path", ["/v1/colours", "/v1/predict/colour", "/v1/describe", "/v1/search/image",
                                  "/v1/describe/items"])
def test_deep_nesting_is_a_client_error_and_the_server_goes_on(client, path):
    for body in (b"[" * 100_000, b'{"images": ' + b"[" * 100 + b"]" * 100 + b"}"):
        got = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert_error(got, 413, "json_too_large")
    assert client.get("/v1/health").status_code == 200


# Bodies: key before body, deadline, bytes in flight ----------------------------------------------------------


@pytest.mark.slow
def test_wrong_key_is_refused_before_the_body_and_slow_bodies_time_out(tmp_path_factory, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret")
    srv = Server(service_workspace(tmp_path_factory), "--api-key-file", str(key_file), "--lazy",
                 "--body-timeout", "1.5", log=tmp_path / "server.log").wait(headers={"X-API-Key": "s3cret"})
    try:
        # 19 MB announced, 1 MB sent: the 401 comes at once, without waiting for (or holding) the rest.
        head = (f"POST /v1/colours HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nX-API-Key: wrong\r\n"
                f"Content-Type: application/json\r\nContent-Length: {19 * 2**20}\r\n\r\n").encode()
        t = time.perf_counter()
        answer = raw_request(srv.port, head, [b"x" * 2**20])
        assert answer.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in answer
        assert time.perf_counter() - t < 5
        # With the right key, a body that trickles in is cut off at the deadline.
        slow = head.replace(b"X-API-Key: wrong", b"X-API-Key: s3cret")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(slow + b"{")
            t = time.perf_counter()
            answer = s.recv(65536)
            waited = time.perf_counter() - t
            while part := s.recv(65536):  # the body may come in a second packet; the server then closes
                answer += part
        assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer, answer[:200]
        assert 1.0 < waited < 6.0
        # Wrong keys are rate-limited per address.
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            # (the 19 MB request above was the first wrong key of this minute)
            codes = [c.get("/v1/items", headers={"X-API-Key": f"guess{i}"}).status_code for i in range(31)]
            assert codes[:29] == [401] * 29 and codes[29:] == [429, 429]
            limited = c.get("/v1/items", headers={"X-API-Key": "s3cret"})
            assert_error(limited, 429, "too_many_requests")
            assert int(limited.headers["retry-after"]) > 0
            assert c.get("/v1/health").status_code == 200
    finally:
        srv.stop()


def _drive(middleware: BodyLimitMiddleware, chunks: list[bytes], content_type: str = "application/json"
           ) -> tuple[int, dict]:
    """One request through the middleware alone (no server): the status it answers and what the app saw."""
    import json

    seen: dict = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"] = message["body"]
        seen["inflight"] = middleware.inflight
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware.app = app
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/colours",
             "headers": [(b"content-type", content_type.encode())]}
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    if status != 200:
        seen["error"] = json.loads(sent[1]["body"])["error"]
    return status, seen


def test_bytes_in_flight_are_capped_and_released():
    middleware = BodyLimitMiddleware(None, Settings(max_request_bytes=1000, max_inflight_bytes=1500))
    status, seen = _drive(middleware, [b'{"a": "', b"x" * 500, b'"}'])
    assert status == 200 and seen["inflight"] == 509 and middleware.inflight == 0
    middleware.inflight = 1200  # other uploads hold most of the budget
    status, seen = _drive(middleware, [b"x" * 400])
    assert status == 503 and seen["error"]["code"] == "busy" and middleware.inflight == 1200
    middleware.inflight = 0
    status, seen = _drive(middleware, [b"x" * 600, b"x" * 600])
    assert status == 413 and middleware.inflight == 0


def test_a_body_that_stalls_gets_408():
    middleware = BodyLimitMiddleware(None, Settings(body_timeout=0.3))
    first = [{"type": "http.request", "body": b"{", "more_body": True}]
    sent: list[dict] = []

    async def receive():
        if first:
            return first.pop()
        await asyncio.sleep(3600)  # the rest never comes

    async def send(message):
        sent.append(message)

    t = time.perf_counter()
    asyncio.run(middleware({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send))
    assert sent[0]["status"] == 408 and time.perf_counter() - t < 2 and middleware.inflight == 0


# Other sites, other hosts -------------------------------------------------------------------------------


def test_host_header_is_checked_against_the_served_names(server):
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2"):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert_error(c.get("/v1/items", headers={"Host": host}), 400, "invalid_host", "Host")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert httpx.get(f"{server.url}/v1/health", headers={"Host": host}).status_code == 200


def test_requests_from_another_origin_cannot_act(client):
    """A page on another port of the same host is same-site: its form posts must not reach the models."""
    before = client.get("/v1/models/colour").json()["loaded_at"]
    other = {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"}
    assert_error(client.post("/v1/models/colour/reload", headers=other), 403, "cross_origin")
    assert_error(client.post("/v1/models/colour/reload", headers={"Origin": "http://127.0.0.1:1"}), 403,
                 "cross_origin")
    assert_error(client.post("/v1/colours", headers=other, files={"files": ("a.png", png_bytes(), "image/png")}), 403)
    # A state change needs a header no form can send, even from a tool with no Origin at all.
    assert_error(client.post("/v1/models/colour/reload"), 403, "missing_header")
    assert client.get("/v1/models/colour").json()["loaded_at"] == before
    assert client.post("/v1/models/colour/reload", headers={"X-Curata-Client": "test"}).status_code == 200
    # The page's own requests (same origin) still work.
    same = {"Origin": client.base_url.scheme + "://" + client.base_url.netloc.decode(), "Sec-Fetch-Site": "same-origin"}
    assert client.post("/v1/colours", headers=same, files={"files": ("a.png", png_bytes(), "image/png")}
                       ).status_code == 200


@pytest.mark.slow
def test_the_session_cookie_only_counts_on_the_servers_own_page(tmp_path_factory, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret")
    srv = Server(service_workspace(tmp_path_factory), "--api-key-file", str(key_file), "--lazy",
                 log=tmp_path / "server.log").wait(headers={"X-API-Key": "s3cret"})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert_error(c.post("/v1/session"), 403, "missing_header")
            assert_error(c.post("/v1/session", headers={"X-Curata-Client": "page"}), 401)
            opened = c.post("/v1/session", headers={"X-API-Key": "s3cret"})
            assert opened.status_code == 204
            set_cookie = opened.headers["set-cookie"].lower()
            assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "s3cret" not in set_cookie
            token = opened.cookies["curata_session"]
            c.cookies.clear()
            cookie = {"Cookie": f"curata_session={token}"}
            item = c.get("/v1/items", headers={"X-API-Key": "s3cret"}).json()["items"][0]
            page = {**cookie, "Sec-Fetch-Site": "same-origin"}
            assert c.get(item["thumbnail_url"], headers=page).status_code == 200
            # Another port's page: same-site, but not same-origin: no thumbnails, no actions.
            elsewhere = {**cookie, "Sec-Fetch-Site": "same-site"}
            assert_error(c.get(item["thumbnail_url"], headers=elsewhere), 401)
            assert_error(c.post("/v1/models/colour/reload", headers={**elsewhere, "X-Curata-Client": "x",
                                                                     "Origin": "http://127.0.0.1:1"}), 403)
            # The page's own write without its header (a form it did not send) is refused too.
            assert_error(c.post("/v1/colours", headers=page, files={"files": ("a.png", png_bytes(), "image/png")}),
                         403, "missing_header")
            ok = c.post("/v1/colours", headers={**page, "X-Curata-Client": "page"},
                        files={"files": ("a.png", png_bytes(), "image/png")})
            assert ok.status_code == 200, ok.text
    finally:
        srv.stop()


# A workspace that changes or breaks under a running server ------------------------------------------------


@pytest.mark.slow
def test_a_rebuilt_index_and_a_reloaded_joint_space_are_picked_up(own_workspace, tmp_path):
    from curata.search.searcher import build_index
    from curata.workspace import Workspace

    if not (own_workspace / "index" / "joint" / "search.json").exists():
        pytest.skip("the search module is not installed: no index was built")
    srv = Server(own_workspace, log=tmp_path / "server.log").wait()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            query = {"q": "a picture", "k": 100}
            before = c.get("/v1/search/text", params=query).json()["results"]
            assert len(before) == 4 * PER_COLOUR
            ws = Workspace(own_workspace)
            frame = ws.items()
            ws.replace_items(frame[frame["label"] != "red"])
            build_index(ws)  # incremental: the red items leave the index
            after = c.get("/v1/search/text", params=query).json()["results"]
            assert len(after) == 3 * PER_COLOUR and not any(h["label"] == "red" for h in after)
            reloaded = c.post("/v1/models/joint/reload", headers={"X-Curata-Client": "test"})
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["status"] == "search model"
            assert len(c.get("/v1/search/text", params=query).json()["results"]) == 3 * PER_COLOUR
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_damaged_collection_version_keeps_the_last_good_snapshot(own_workspace, tmp_path):
    """A new version whose data file was damaged (a disk fault, a copy cut short): the service keeps serving
    the last good snapshot and /v1/ready says why; `curata rollback` brings a readable version back."""
    from curata.collection import Item, items_to_frame
    from curata.workspace import Workspace

    ws = Workspace(own_workspace)
    good = ws.collection.version
    srv = Server(own_workspace, "--lazy", log=tmp_path / "server.log").wait()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get("/v1/items").json()["total"] == 4 * PER_COLOUR
            before = {p.name for p in (ws.collection_path / "data").iterdir()}
            ws.add_items(items_to_frame([Item(id="late/1", source="late", collection="c", image="/x.png",
                                              image_sha256="ab" * 32)]))
            [new] = [p for p in (ws.collection_path / "data").iterdir() if p.name not in before]
            new.write_bytes(new.read_bytes()[: new.stat().st_size // 2])
            listed = c.get("/v1/items")
            assert listed.status_code == 200 and listed.json()["total"] == 4 * PER_COLOUR
            ready = c.get("/v1/ready")
            assert ready.status_code == 503 and "collection" in ready.json()["status"]
            assert str(own_workspace) not in ready.text and "/tmp" not in ready.text
            ws.collection.rollback(good)
            assert c.get("/v1/ready").status_code == 200
            assert c.get("/v1/items").json()["total"] == 4 * PER_COLOUR
    finally:
        srv.stop()


@pytest.mark.slow
def test_no_server_path_in_ready_or_model_errors(own_workspace, tmp_path):
    model = own_workspace / "models" / "colour" / "model.joblib"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    (own_workspace / "index" / "joint" / "search.json").write_text("{}")  # built by another model
    srv = Server(own_workspace, log=tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{srv.url}/v1/ready", timeout=5)
                if ready.json()["status"] != "loading":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            texts = [c.get("/v1/ready").text, c.get("/v1/models/colour").text, c.get("/v1/models").text,
                     c.post("/v1/predict/colour", files={"files": ("a.png", png_bytes(), "image/png")}).text,
                     c.get("/v1/search/text", params={"q": "red"}).text]
            assert "error" in texts[1]
            for text in texts:
                assert str(own_workspace) not in text and str(tmp_path) not in text
                assert "/tmp/" not in text and "site-packages" not in text, text
    finally:
        srv.stop()


# Item ids, filters, HTTP itself, and the operator's warnings ---------------------------------------------------


@pytest.fixture(scope="module")
def odd_ids_client(tmp_path_factory):
    """A workspace whose ids end in /image, /thumbnail and /features or hold '..' segments, in-process."""
    from fastapi.testclient import TestClient

    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.ingest.table import ColumnMap
    from curata.service.app import create_app
    from curata.workspace import Workspace

    root = tmp_path_factory.mktemp("odd-ids")
    (root / "src").mkdir()
    ids = ["a", "a/image", "b/image", "c/thumbnail", "d/features", "e/../up", "f/./g"]
    for i, _ in enumerate(ids):
        (root / "src" / f"{i}.png").write_bytes(png_bytes((40 * i, 90, 200)))
    pd.DataFrame({"id": ids, "image": [f"{i}.png" for i in range(len(ids))], "text": ids}).to_csv(
        root / "src" / "labels.csv", index=False)
    ws = Workspace(root / "ws")
    ingest(root / "src", ws, IngestOptions(format="table", source_name="s", columns=ColumnMap()))
    with TestClient(create_app(Settings(workspace=ws.root, preload=False))) as c:
        yield c


def test_every_id_can_be_fetched(odd_ids_client):
    c = odd_ids_client
    items = c.get("/v1/items", params={"limit": 50}).json()["items"]
    assert {i["id"] for i in items} == {f"s/{x}" for x in ("a", "a/image", "b/image", "c/thumbnail", "d/features",
                                                           "e/../up", "f/./g")}
    for item in items:
        assert c.get("/v1/item", params={"id": item["id"]}).json()["id"] == item["id"]
        thumb = c.get(item["thumbnail_url"] + "&size=32")
        assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
        assert c.get(item["image_url"]).status_code == 200
        assert c.get("/v1/item/features", params={"id": item["id"]}).status_code == 200
    # Path URLs: an id ending in /image is the item when no item owns the shorter id...
    for whole in ("s/b/image", "s/c/thumbnail", "s/d/features"):
        assert c.get(f"/v1/items/{whole}").json()["id"] == whole
    # ...and the image of item a when it does.
    assert c.get("/v1/items/s/a/image").headers["content-type"] == "image/png"
    assert_error(c.get("/v1/item", params={"id": "s/nope"}), 404, "unknown_item")


@pytest.mark.parametrize("name", ["label", "collection", "tag", "colour", "cluster_run"])
def test_empty_filters_are_refused_like_in_search(odd_ids_client, name):
    assert_error(odd_ids_client.get("/v1/items", params={name: ""}), 422, "invalid_request", f"query.{name}")


def test_malformed_http_gets_the_json_error_shape(server):
    answer = raw_request(server.port, b"GARBAGE \x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n", [])
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert b'"error"' in body and b'"bad_request"' in body


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch, tmp_path):
    import uvicorn

    from curata.cli import app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    monkeypatch.delenv("CURATA_API_KEY", raising=False)
    monkeypatch.setenv("CURATA_SERVICE_SETTINGS", "")  # serve sets it: restored after the test
    (tmp_path / "ws").mkdir()
    runner = CliRunner()
    loud = runner.invoke(app, ["serve", "-w", str(tmp_path / "ws"), "--host", "0.0.0.0"])
    assert loud.exit_code == 0 and "warning" in loud.output and "no API key" in loud.output
    quiet = runner.invoke(app, ["serve", "-w", str(tmp_path / "ws")])
    assert quiet.exit_code == 0 and "warning" not in quiet.output
    assert calls[-1]["http"].endswith("JsonErrorHttpToolsProtocol")
    # A loopback server answers only to loopback names, unless told otherwise.
    settings = Settings.from_json(os.environ["CURATA_SERVICE_SETTINGS"])
    assert set(settings.allowed_hosts) >= {"localhost", "127.0.0.1"}
