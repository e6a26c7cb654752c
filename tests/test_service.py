"""The HTTP service against a real uvicorn process on 127.0.0.1, over a workspace the tests build:
items and filters, colours, predictions, limits and the one error shape, reload under load, API key,
CORS, URL fetching."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from curata.service.errors import ApiError
from curata.service.images import fetch_url
from curata.service.settings import Settings
from test_service_support import (
    COLOURS,
    PER_COLOUR,
    Server,
    assert_error,
    png_bytes,
    raw_request,
    running_server,
    service_workspace,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return service_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "service-log")


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


PAGE = {"X-Curata-Client": "test"}  # what a state change (a reload) needs beside the key


def upload(*images: bytes, name: str = "image.png", mime: str = "image/png") -> list:
    return [("files", (f"{i}-{name}", data, mime)) for i, data in enumerate(images)]


# Health, docs, page ---------------------------------------------------------------------------------


def test_health_ready_docs_and_page(client):
    assert client.get("/v1/health").json()["status"] == "ok"
    ready = client.get("/v1/ready").json()
    assert ready["ready"] and ready["status"] == "ready" and ready["items"] == 4 * PER_COLOUR
    assert ready["models"]["colour"] == "loaded" and ready["search"] == "ready"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/predict/{bundle}" in spec["paths"] and "/v1/items/{item_id}" in spec["paths"]
    body = spec["paths"]["/v1/colours"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    page = client.get("/")
    assert page.status_code == 200 and "curata" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.split("<body>")[0].replace('href="/static', "")  # no CDN in the head
    assert client.get("/static/app.js").status_code == 200


# Items --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["label", "tag", "collection", "q"])
def test_filter_values_are_data_never_sql(client, field):
    """Filters become SQL run in the table scan: quotes and operators in a value match nothing, never widen
    the match or break the query."""
    for value in ("red' OR '1'='1", "x') OR true --", "red'; DROP TABLE items; --", "%", "_", "\\"):
        page = client.get("/v1/items", params={field: value})
        assert page.status_code == 200, page.text
        assert page.json()["total"] == 0, (field, value)


def test_items_filters_and_paging(client):
    everything = client.get("/v1/items", params={"limit": 500}).json()
    assert everything["total"] == 4 * PER_COLOUR
    assert client.get("/v1/items", params={"label": "red"}).json()["total"] == PER_COLOUR
    circles = client.get("/v1/items", params={"tag": "shape=circle"}).json()
    assert circles["total"] == 8 and all("shape=circle" in it["tags"] for it in circles["items"])
    blue = client.get("/v1/items", params={"colour": "blue"}).json()
    assert blue["total"] == PER_COLOUR and {it["label"] for it in blue["items"]} == {"blue"}
    # Clusters of the run the workspace holds: each cluster is one colour here.
    one = client.get("/v1/items", params={"cluster": 0}).json()
    assert one["cluster_run"] == "colour-k4" and one["total"] == PER_COLOUR
    assert len({it["label"] for it in one["items"]}) == 1 and all(it["cluster"] == 0 for it in one["items"])
    page1 = client.get("/v1/items", params={"limit": 5, "offset": 0}).json()["items"]
    page2 = client.get("/v1/items", params={"limit": 5, "offset": 5}).json()["items"]
    assert len(page1) == len(page2) == 5 and not {i["id"] for i in page1} & {i["id"] for i in page2}
    assert client.get("/v1/items", params={"q": "STRIPES"}).json()["total"] == 8
    assert client.get("/v1/items", params={"label": "red", "colour": "green"}).json()["total"] == 0
    assert_error(client.get("/v1/items", params={"cluster_run": "nope"}), 404, "unknown_cluster_run")
    assert_error(client.get("/v1/items", params={"limit": 0}), 422, "invalid_request", "query.limit")
    facets = client.get("/v1/items/facets").json()
    assert facets["labels"] == {name: PER_COLOUR for name in COLOURS}
    assert facets["colours"]["yellow"] == PER_COLOUR and len(facets["clusters"]) == 4


def test_one_item_its_image_thumbnail_and_features(client, workspace):
    item = client.get("/v1/items/demo/green-1").json()
    assert item["label"] == "green" and item["colour"] == "green" and item["tags"] == ["shape=square", "tone=cool"]
    assert item["palette"] and item["palette"][0]["basic"] == "green" and item["colours"][0]["name"] == "green"
    assert item["clusters"] == {"colour-k4": item["cluster"]} and "image" not in item  # no server paths
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (workspace.parent / "source" / "images" / "green-1.png").read_bytes()
    thumb = client.get(item["thumbnail_url"] + "&size=32")
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    features = client.get("/v1/items/demo/green-1/features").json()["features"]
    assert {f["name"] for f in features} >= {"color_stats", "palette"} and all(f["values"] is None for f in features)
    palette = client.get("/v1/items/demo/green-1/features", params={"name": "palette"}).json()["features"]
    assert len(palette) == 1 and len(palette[0]["values"]) == palette[0]["dim"] == 20
    assert_error(client.get("/v1/items/demo/green-1/features", params={"name": "effnet_lite2"}), 404)
    assert_error(client.get("/v1/items/demo/nope"), 404, "unknown_item")
    assert_error(client.get("/v1/items/demo/nope/thumbnail"), 404, "unknown_item")


# Colours and predictions --------------------------------------------------------------------------------


def test_colours_multipart_base64_and_several_images(client):
    red, blue = png_bytes(COLOURS["red"]), png_bytes(COLOURS["blue"], shape="square")
    got = client.post("/v1/colours", files=upload(red, blue)).json()
    assert [r["colour"] for r in got["results"]] == ["red", "blue"]
    assert got["k"] == 5 and 1 <= len(got["results"][0]["palette"]) <= 5
    assert abs(sum(p["share"] for p in got["results"][0]["palette"]) - 1) < 1e-6
    as_json = client.post("/v1/colours", params={"k": 3, "vocabulary": "css"},
                          json={"images": [{"base64": base64.b64encode(red).decode(), "name": "mine"}]}).json()
    assert as_json["results"][0]["image"] == "mine" and len(as_json["results"][0]["palette"]) <= 3
    data_url = "data:image/png;base64," + base64.b64encode(blue).decode()
    assert client.post("/v1/colours", json={"images": [{"base64": data_url}]}).json()["results"][0]["colour"] == "blue"
    # The type comes from the bytes: a PNG sent as text/plain is still a PNG.
    assert client.post("/v1/colours", files=upload(red, mime="text/plain")).status_code == 200
    item = client.post("/v1/colours", json={"images": [{"item": "demo/yellow-2"}]}).json()
    assert item["results"][0]["colour"] == "yellow"


def test_predict_with_a_trained_bundle(client):
    got = client.post("/v1/predict/colour", files=upload(png_bytes(COLOURS["blue"]), png_bytes(COLOURS["green"])))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["task"] == "colour" and [r["prediction"] for r in body["results"]] == ["blue", "green"]
    assert max(body["results"][0]["scores"], key=body["results"][0]["scores"].get) == "blue"
    by_item = client.post("/v1/predict/colour", params={"top": 1},
                          json={"images": [{"item": "demo/red-4"}, {"item": "demo/yellow-4"}]}).json()
    assert [r["prediction"] for r in by_item["results"]] == ["red", "yellow"]
    assert all(len(r["scores"]) == 1 for r in by_item["results"])
    assert_error(client.post("/v1/predict/nope", files=upload(png_bytes())), 404, "unknown_bundle", "bundle")
    assert_error(client.post("/v1/predict/..%2F..%2Fetc", files=upload(png_bytes())), 404)
    assert_error(client.post("/v1/predict/colour", json={"images": [{"item": "demo/none"}]}), 404, "unknown_item")
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["colour"]["status"] == "loaded" and models["colour"]["task"] == "colour"
    assert client.get("/v1/models/colour").json()["labels"] == sorted(COLOURS)
    assert_error(client.get("/v1/models/extractors"), 404, "unknown_bundle")


def test_clusters(client):
    runs = client.get("/v1/clusters").json()["runs"]
    assert [r["run"] for r in runs] == ["colour-k4"] and runs[0]["k"] == 4
    run = client.get("/v1/clusters/colour-k4").json()
    assert len(run["clusters"]) == 4 and "files" not in run
    assignments = client.get("/v1/clusters/colour-k4/assignments", params={"cluster": 1}).json()
    assert assignments["total"] == PER_COLOUR and all(a["cluster"] == 1 for a in assignments["assignments"])
    assert_error(client.get("/v1/clusters/duplicates-phash"), 404)


# Limits and errors ---------------------------------------------------------------------------------------


def test_broken_images_are_refused_with_a_reason(client):
    good = png_bytes()
    assert_error(client.post("/v1/colours", files=upload(good[: len(good) // 2])), 422, "truncated", "files[0]")
    corrupt = good[:40] + bytes(range(256)) * 4
    assert client.post("/v1/colours", files=upload(corrupt)).status_code == 422
    assert_error(client.post("/v1/colours", files=upload(b"")), 422, "empty_image")
    assert_error(client.post("/v1/colours", files=upload(b"%PDF-1.4 not an image", mime="image/png")), 415,
                 "unsupported_media_type", "files[0]")
    svg = b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>"
    assert_error(client.post("/v1/colours", files=upload(svg, mime="image/svg+xml")), 415)
    # A decompression bomb: 8000 x 8000 1-bit pixels are a few kB of PNG and 64 MP, over the 40 MP cap.
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    error = assert_error(client.post("/v1/colours", files=upload(buf.getvalue())), 413, "too_many_pixels")
    assert "megapixels" in error["message"]
    # One bad image fails the request, and the error says which one.
    assert_error(client.post("/v1/predict/colour", files=upload(good, b"junk")), 415, field="files[1]")


def test_malformed_requests(client, server):
    multipart = {"content-type": "multipart/form-data; boundary=zzz"}
    no_name = b'--zzz\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nxx\r\n--zzz--\r\n'
    assert_error(client.post("/v1/colours", content=no_name, headers=multipart), 400, "malformed_multipart")
    # A body with no part at all (the closing boundary never comes) holds no image.
    assert_error(client.post("/v1/colours", content=b"--zzz\r\ngarbage", headers=multipart), 422, "no_images")
    assert_error(client.post("/v1/colours", content=b"x", headers={"content-type": "multipart/form-data"}), 400)
    assert_error(client.post("/v1/colours", content=b"hello", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type", "Content-Type")
    assert_error(client.post("/v1/colours"), 415)
    assert_error(client.post("/v1/colours", content=b'{"images": [', headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(client.post("/v1/colours", json={"images": "x"}), 422, "invalid_request", "images")
    assert_error(client.post("/v1/colours", json={"images": []}), 422, "invalid_request")
    assert_error(client.post("/v1/colours", json={"images": [{"text": "no image"}]}), 422, "invalid_request")
    assert_error(client.post("/v1/colours", json={"images": [{"base64": "QUJD", "extra": 1}]}), 422)
    assert_error(client.post("/v1/colours", json={"images": [{"base64": "not base64!"}]}), 422, "invalid_base64")
    assert_error(client.post("/v1/colours", json=[1, 2]), 422)
    assert_error(client.post("/v1/colours", json={"images": [{"url": "http://example.com/a.png"}]}), 403,
                 "urls_disabled")
    assert_error(client.post("/v1/colours", files=[("text", (None, "only text"))]), 422, "no_images")
    assert_error(client.post("/v1/predict/colour", files=upload(png_bytes(), png_bytes()),
                             data={"text": ["a", "b", "c"]}), 422, "text_count")
    assert_error(client.post("/v1/colours", files=upload(*[png_bytes()] * 17)), 413, "too_many_images")
    assert_error(client.post("/v1/colours", json={"images": [{"item": "demo/red-0"}] * 17}), 413, "too_many_images")
    assert_error(client.post("/v1/colours", params={"k": 99}, files=upload(png_bytes())), 422, "invalid_request",
                 "query.k")
    assert_error(client.post("/v1/describe/items", content=b"{", headers={"content-type": "application/json"}), 400,
                 "invalid_json")
    assert_error(client.post("/v1/describe/items", json={"ids": []}), 422)
    assert_error(client.get("/v1/nowhere"), 404, "not_found")
    assert_error(client.delete("/v1/items"), 405, "method_not_allowed")
    assert_error(client.put("/v1/colours"), 405)


def test_request_size_is_checked_before_reading(server):
    # A declared 50 MB body is refused from its Content-Length, before any of it is read.
    head = (b"POST /v1/colours HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 52428800\r\n\r\n")
    answer = raw_request(server.port, head, [b"x" * 65536] * 4)
    assert answer.startswith(b"HTTP/1.1 413") and b'"request_too_large"' in answer
    # A chunked 50 MB upload declares nothing: the streamed bytes are counted and it stops at the limit.
    head = (b"POST /v1/predict/colour HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (1 << 20)
    answer = raw_request(server.port, head, [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 50 + [b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 413") and b"more than" in answer
    with httpx.Client(base_url=server.url) as c:  # and the server is still fine
        assert c.get("/v1/health").status_code == 200


# Search and describe: the real modules when the workspace has what they need, else a clear 409 -----------


def test_search_answers_or_says_what_is_missing(client, workspace):
    got = client.get("/v1/search/text", params={"q": "red circle"})
    assert str(workspace) not in got.text  # errors do not reveal the server's paths
    if got.status_code == 200:
        assert all({"id", "score", "thumbnail_url"} <= set(hit) for hit in got.json()["results"])
    else:
        error = assert_error(got, 409)
        assert error["code"] in ("no_search_index", "search_unavailable")
        assert error["code"] != "no_search_index" or "curata index build" in error["message"]
    assert_error(client.get("/v1/search/item/demo/nope"), 404, "unknown_item")
    assert_error(client.get("/v1/search/text", params={"q": "x", "model": "clip:/etc/passwd"}), 404)
    assert_error(client.get("/v1/search/text"), 422, "invalid_request", "query.q")


@pytest.mark.slow
def test_search_with_a_real_index(client, workspace):
    """The real searcher over the joint space and index the workspace fixture built."""
    if not (workspace / "index" / "joint" / "search.json").exists():
        pytest.skip("the search module is not installed: no index was built (the 409 is tested above)")
    got = client.get("/v1/search/text", params={"q": "a red picture with a white circle", "k": 5})
    assert got.status_code == 200, got.text
    hits = got.json()["results"]
    assert len(hits) == 5 and all(h["thumbnail_url"].startswith("/v1/item/thumbnail?id=") for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    blue = client.get("/v1/search/text", params={"q": "picture", "label": "blue", "k": 50}).json()["results"]
    assert len(blue) == PER_COLOUR and {h["label"] for h in blue} == {"blue"}
    near = client.get("/v1/search/item/demo/red-0", params={"k": 3}).json()["results"]
    assert len(near) == 3 and "demo/red-0" not in [h["id"] for h in near]
    by_image = client.post("/v1/search/image", params={"k": 4}, files=upload(png_bytes(), png_bytes()))
    assert by_image.status_code == 200 and [len(r["results"]) for r in by_image.json()["results"]] == [4, 4]
    assert_error(client.get("/v1/search/text", params={"q": "x", "model": "colour"}), 409, "no_search_index")
    assert client.get("/v1/models/joint").json()["status"] == "search model"
    assert_error(client.post("/v1/predict/joint", files=upload(png_bytes())), 409, "not_a_classifier")
    assert client.get("/v1/ready").json()["search"] == "ready"


@pytest.mark.slow
def test_describe_items_and_images(client):
    got = client.post("/v1/describe/items", json={"ids": ["demo/red-0"], "top_k": 5})
    if got.status_code == 409:  # the describe module is not there (yet): a clear error, not a 500
        assert_error(got, 409)
        pytest.skip(f"describe unavailable: {got.json()['error']['message']}")
    assert got.status_code == 200, got.text
    one = got.json()["results"][0]
    assert one["id"] == "demo/red-0" and 0 < len(one["keywords"]) <= 5 and one["sentence"]
    assert "red" in [k["keyword"] for k in one["keywords"]]
    image = client.post("/v1/describe", files=upload(png_bytes(COLOURS["green"]))).json()["results"][0]
    assert image["image"] == "0-image.png" and image["colours"][0]["name"] == "green"
    assert_error(client.post("/v1/describe/items", json={"ids": ["demo/nope"]}), 404, "unknown_item")


# Reload under load -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_requests_during_reloads_get_the_old_or_the_new_model(client, server):
    before = client.get("/v1/models/colour").json()["loaded_at"]
    image = png_bytes(COLOURS["yellow"])
    stop = threading.Event()
    answers: list[int | str] = []

    def predict_until_stopped() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/predict/colour", files=upload(image))
                answers.append(r.json()["results"][0]["prediction"] if r.status_code == 200 else r.status_code)

    reloads = []
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(predict_until_stopped) for _ in range(3)]
        deadline = time.monotonic() + 30
        # Reload again and again while predictions keep arriving, so that they overlap.
        while (len(reloads) < 4 or len(answers) < 12) and time.monotonic() < deadline:
            reloads.append(client.post("/v1/models/colour/reload", headers=PAGE))
        stop.set()
        for f in futures:
            f.result()
    assert all(r.status_code == 200 for r in reloads)
    assert len(reloads) >= 4 and len(answers) >= 12, (len(reloads), len(answers))
    assert set(answers) == {"yellow"}, [a for a in answers if a != "yellow"][:10]
    assert client.get("/v1/models/colour").json()["loaded_at"] >= before


def test_reloading_a_broken_bundle_keeps_the_old_one(client, workspace):
    card = workspace / "models" / "colour" / "card.json"
    text = card.read_text()
    card.write_text(text.replace('"color_stats@', '"color_stats@999-'))
    try:
        error = assert_error(client.post("/v1/models/colour/reload", headers=PAGE), 409, "bundle_error")
        assert "retrain" in error["message"]
        still = client.post("/v1/predict/colour", files=upload(png_bytes(COLOURS["red"])))
        assert still.status_code == 200 and still.json()["results"][0]["prediction"] == "red"
    finally:
        card.write_text(text)
    assert client.post("/v1/models/colour/reload", headers=PAGE).status_code == 200
    assert client.get("/v1/models/colour").json()["error"] is None


# API key, CORS, URLs -----------------------------------------------------------------------------------------


def test_cors_is_off_by_default(client):
    got = client.get("/v1/items", headers={"Origin": "http://elsewhere.example"})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers
    preflight = client.options("/v1/colours", headers={"Origin": "http://elsewhere.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/red.png":
            body, status = png_bytes(COLOURS["red"]), 200
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.end_headers()
            return
        else:
            body, status = b"missing", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_api_key_cors_origins_and_url_fetching(workspace, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    srv = Server(workspace, "--api-key-file", str(key_file), "--cors-origin", "http://allowed.example",
                 "--allow-urls", "--allow-private-urls", "--lazy", log=tmp_path / "server.log"
                 ).wait(headers={"X-API-Key": "s3cret"})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/v1/health").status_code == 200  # health needs no key
            assert_error(c.get("/v1/items"), 401, "unauthorized", "X-API-Key")
            assert_error(c.get("/v1/ready"), 401)
            assert_error(c.get("/v1/items", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
            assert_error(c.post("/v1/colours", files=upload(png_bytes())), 401)
            assert c.get("/v1/items", headers={"X-API-Key": "s3cret"}).json()["total"] == 4 * PER_COLOUR
            # The web page exchanges the key for an HttpOnly session cookie, which then works as the header does.
            session = c.post("/v1/session", headers={"X-API-Key": "s3cret"})
            assert session.status_code == 204 and "httponly" in session.headers["set-cookie"].lower()
            assert "s3cret" not in session.headers["set-cookie"]
            cookie = {"Cookie": f"curata_session={session.cookies['curata_session']}"}
            c.cookies.clear()
            assert c.get("/v1/models", headers=cookie).status_code == 200
            assert_error(c.get("/v1/models", headers={"Cookie": "curata_session=s3cret"}), 401)
            assert c.get("/").status_code == 200  # the page itself holds no data
            key = {"X-API-Key": "s3cret"}
            allowed = c.get("/v1/health", headers={"Origin": "http://allowed.example"})
            assert allowed.headers["access-control-allow-origin"] == "http://allowed.example"
            other = c.get("/v1/health", headers={"Origin": "http://other.example"})
            assert "access-control-allow-origin" not in other.headers
            preflight = c.options("/v1/colours", headers={"Origin": "http://allowed.example",
                                                          "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "x-api-key"})
            assert preflight.status_code == 200
            assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
            base = f"http://127.0.0.1:{images.server_address[1]}"
            got = c.post("/v1/colours", headers=key, json={"images": [{"url": f"{base}/red.png"},
                                                                      {"url": f"{base}/moved"}]})
            assert got.status_code == 200, got.text
            assert [r["colour"] for r in got.json()["results"]] == ["red", "red"]
            assert_error(c.post("/v1/colours", headers=key, json={"images": [{"url": f"{base}/gone.png"}]}), 422,
                         "fetch_failed")
            assert_error(c.post("/v1/colours", headers=key, json={"images": [{"url": "file:///etc/passwd"}]}), 422,
                         "bad_url")
    finally:
        srv.stop()
        images.shutdown()


def test_url_fetching_refuses_private_addresses_unless_allowed():
    settings = Settings(allow_urls=True)
    for url in ("http://127.0.0.1:9/a.png", "http://localhost/a.png", "http://10.1.2.3/a.png",
                "http://[::1]/a.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(ApiError) as caught:
            fetch_url(url, settings, "url")
        assert caught.value.code == "url_not_allowed", url


def test_settings_round_trip_and_key_sources(tmp_path, monkeypatch):
    settings = Settings(workspace=tmp_path, cors_origins=("http://a.example",), max_images=3)
    assert Settings.from_json(settings.to_json()) == settings
    monkeypatch.setenv("CURATA_API_KEY", "from-env")
    assert settings.api_key() == "from-env"
    monkeypatch.setenv("CURATA_API_KEY", "")
    assert settings.api_key() is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        Settings(api_key_file=empty).api_key()
    with pytest.raises(ValueError, match="max_images"):
        Settings(max_images=0)
    with pytest.raises(ValueError, match="unknown service settings"):
        Settings.from_json(json.dumps({"workspace": "x", "nope": 1}))


@pytest.mark.parametrize("slots", [1, 2])
def test_compute_slots_bound_the_requests_computing_at_once(tmp_path, slots):
    import threading
    import time

    import anyio

    from curata.service.state import ServiceState

    state = ServiceState(Settings(workspace=tmp_path, compute_slots=slots))
    running, most, lock = 0, 0, threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return i * i

    async def main() -> list[int]:
        results: list[int] = [0] * 6

        async def one(i: int) -> None:
            results[i] = await state.compute(work, i)

        async with anyio.create_task_group() as group:
            for i in range(6):
                group.start_soon(one, i)
        return results

    assert anyio.run(main) == [i * i for i in range(6)]
    assert most == slots
    with pytest.raises(ValueError, match="compute_slots must be >= 1"):
        Settings(workspace=tmp_path, compute_slots=0)
