"""Generic paginated JSON API collector: spec files, the four pagination kinds, filters, failures, and a
run killed with SIGKILL that a rerun completes without refetching (loopback servers only)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from curata.cli import app
from curata.collect import CollectOptions, collect_api, load_spec
from curata.collect.api import spec_from_dict
from curata.workspace import Workspace
from test_collect_support import Reply, Request, Server, fast_policy, png

N = 40


def product(i: int, base: str) -> dict[str, Any]:
    return {
        "id": i, "title": f"Product {i}", "description": f"The {i}th thing.",
        "category": ["phones", "laptops"][i % 2], "brand": ["Acme", "Globex", None][i % 3],
        "tags": ["sale", "new"] if i % 4 == 0 else ["basic"],
        "availabilityStatus": "Out of Stock" if i % 5 == 0 else "In Stock",
        "price": i * 1.5,
        "images": {"thumb": f"/img/{i}.png"} if i % 7 else {},
    }


def shop_route(server: Server, faults: dict[str, Any] | None = None):
    faults = faults if faults is not None else {}

    def route(req: Request) -> Reply:
        if req.path.startswith("/img/"):
            return Reply(body=png(int(req.path[5:-4])), ctype="image/png")
        fault = faults.get((req.path, req.query.get("page") or req.query.get("skip") or req.query.get("cursor")))
        if fault is not None:
            reply = fault(req)
            if reply is not None:
                return reply
        items = [product(i, server.base) for i in range(1, N + 1)]
        if req.path == "/products":  # page numbers, 10 a page, items under data.products
            page, size = int(req.query["page"]), int(req.query["per_page"])
            return Reply.json({"data": {"products": items[(page - 1) * size: page * size]}, "meta": {"total": N}})
        if req.path == "/offset":
            skip, limit = int(req.query["skip"]), int(req.query["limit"])
            return Reply.json({"products": items[skip: skip + limit], "total": N, "skip": skip})
        if req.path == "/cursor":
            start = int(req.query.get("cursor") or 0)
            nxt = start + 15 if start + 15 < N else None
            return Reply.json({"items": items[start: start + 15], "next_cursor": None if nxt is None else str(nxt)})
        if req.path == "/links":
            page = int(req.query.get("page", 1))
            nxt = f"/links?page={page + 1}" if page * 20 < N else None
            return Reply.json({"results": items[(page - 1) * 20: page * 20], "links": {"next": nxt}})
        return Reply(404, b"{}")

    return route


SHOP_TOML = """
name = "shop"
url = "{base}/products?page={{page}}&per_page={{page_size}}"
items = "data.products"
limit = 8
headers = {{ Authorization = "Bearer ${{SHOP_TOKEN}}" }}

[pagination]
type = "page"
page_size = 10

[fields]
id = "id"
image = "images.thumb"
text = ["title", "description"]
label = "category"
tags = "tags"
traits = {{ brand = "brand" }}
meta = {{ price = "price" }}

[filters]
required = ["brand"]
equals = {{ availabilityStatus = "In Stock" }}
"""


def _pages(server: Server, path: str) -> list[str]:
    return [r.query.get("page") or r.query.get("skip") or r.query.get("cursor") or "1"
            for r in server.requests("GET", path) if r.code == 200]


def test_page_spec_filters_limit_and_a_max_items_stop_resume(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHOP_TOKEN", "s3cret")
    ws = Workspace(tmp_path / "ws")
    with Server() as server:
        faults = {("/products", "2"): lambda r: Reply(500, b"oops", "text/plain") if r.hit == 1 else None,
                  ("/products", "3"): lambda r: Reply(429, b"{}", headers={"Retry-After": "0"}) if r.hit == 1 else None}
        server.route = shop_route(server, faults)
        (tmp_path / "shop.toml").write_text(SHOP_TOML.format(base=server.base))
        spec = load_spec(tmp_path / "shop.toml")

        first = collect_api(ws, spec, CollectOptions(download=fast_policy(), max_items=3))
        assert first.records == 3 and _pages(server, "/products") == ["1"]
        assert {r.headers["authorization"] for r in server.requests("GET", "/products")} == {"Bearer s3cret"}

        second = collect_api(ws, spec, CollectOptions(download=fast_policy()))
        # Page 1 keeps 1, 3, 4, 6, 9 (no brand: 2, 5, 8; out of stock: 10; no image: 7); page 2 gives 3 more.
        assert _pages(server, "/products") == ["1", "2"]  # page 1 not refetched; stop at the limit
        assert second.resumed and second.complete and second.records == 8
        assert second.skipped == {"missing brand": 6, "availabilityStatus != 'In Stock'": 2, "missing images.thumb": 2}

    items = ws.items().set_index("id")
    assert list(items.index) == [f"shop/{i}" for i in (1, 3, 4, 6, 9, 12, 13, 16)]
    item = items.loc["shop/4"]
    assert item["text"] == "Product 4. The 4th thing." and item["label"] == "phones"
    assert list(item["tags"]) == ["sale", "new", "brand=Globex"]
    assert json.loads(item["meta"])["price"] == 6.0


@pytest.mark.parametrize("kind", ["offset", "cursor", "next"])
def test_offset_cursor_and_next_link_pagination(tmp_path: Path, kind: str) -> None:
    with Server() as server:
        server.route = shop_route(server)
        spec = {
            "offset": {"url": f"{server.base}/offset?skip={{offset}}&limit={{page_size}}", "items": "products",
                       "pagination": {"type": "offset", "page_size": 10, "total": "total"}},
            "cursor": {"url": f"{server.base}/cursor", "items": "items",
                       "pagination": {"type": "cursor", "cursor": "next_cursor", "cursor_param": "cursor"}},
            "next": {"url": f"{server.base}/links", "items": "results",
                     "pagination": {"type": "next", "next": "links.next"}},
        }[kind]
        spec = spec_from_dict({"name": kind, "fields": {"id": "id", "image": "images.thumb"}, **spec})
        report = collect_api(Workspace(tmp_path / "ws"), spec, CollectOptions(download=fast_policy()))
        expected = {"offset": ["0", "10", "20", "30"], "cursor": ["1", "15", "30"], "next": ["1", "2"]}[kind]
        assert _pages(server, {"offset": "/offset", "cursor": "/cursor", "next": "/links"}[kind]) == expected
    assert report.complete and report.records == N - 5  # 7, 14, 21, 28, 35 have no image
    assert report.ingest is not None and len(report.ingest.ok) == N - 5


def test_bad_pages_are_reported_and_a_rerun_continues(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    broken = {"on": True}
    with Server() as server:
        faults = {("/products", "2"): lambda r: Reply(body=b"<html>maintenance</html>", ctype="text/html")
                  if broken["on"] else None}
        server.route = shop_route(server, faults)
        spec = spec_from_dict({"name": "shop", "url": f"{server.base}/products?page={{page}}&per_page={{page_size}}",
                               "items": "data.products", "pagination": {"type": "page", "page_size": 10},
                               "fields": {"id": "id", "image": "images.thumb"}, "limit": 15})
        first = collect_api(ws, spec, CollectOptions(download=fast_policy()))
        assert not first.complete and first.records == 9
        assert "invalid JSON" in first.failures[0]["reason"] and "text/html" in first.failures[0]["reason"]
        broken["on"] = False
        second = collect_api(ws, spec, CollectOptions(download=fast_policy()))
        assert second.complete and second.records == 15
        assert _pages(server, "/products") == ["1", "2", "2"]  # the HTML page 2, then the real one; 1 once

        wrong = spec_from_dict({"name": "wrong", "url": f"{server.base}/products?page={{page}}&per_page=5",
                                "items": "data.items", "pagination": {"type": "page"},
                                "fields": {"image": "images.thumb"}})
        report = collect_api(ws, wrong, CollectOptions(download=fast_policy()))
        assert report.failures[0]["reason"] == "items path 'data.items' is not a list (got nothing)"


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    base = {"url": "https://shop.example/p?page={page}", "fields": {"image": "img"}}
    with pytest.raises(ValueError, match=r"unknown key pagination.'size'"):
        spec_from_dict({**base, "pagination": {"type": "page", "size": 3}})
    with pytest.raises(ValueError, match=re.escape("needs pagination.cursor")):
        spec_from_dict({**base, "pagination": {"type": "cursor"}})
    with pytest.raises(ValueError, match=re.escape("unknown placeholder {pg}")):
        spec_from_dict({**base, "url": "https://shop.example/p?page={pg}"})
    with pytest.raises(ValueError, match=re.escape("'fields.image'")):
        spec_from_dict({"url": base["url"], "fields": {"id": "id"}})
    (tmp_path / "bad.json").write_text(json.dumps({**base, "limit": 0}))
    result = CliRunner().invoke(app, ["collect", "api", str(tmp_path / "bad.json"), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "bad.json: 'limit' must be a positive integer" in result.output


@pytest.mark.slow
def test_a_killed_cli_run_is_completed_by_the_next_without_refetching(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with Server() as server:
        slow = {"on": True}

        def slow_page(r: Request) -> Reply | None:
            return Reply(body=_page_body(server, r), delay=0.4) if slow["on"] else None

        faults = {("/products", str(p)): slow_page for p in range(1, 9)}
        server.route = shop_route(server, faults)
        spec = {"name": "shop", "url": f"{server.base}/products?page={{page}}&per_page={{page_size}}",
                "items": "data.products", "pagination": {"type": "page", "page_size": 5},
                "fields": {"id": "id", "image": "images.thumb"}}
        (tmp_path / "shop.json").write_text(json.dumps(spec))
        cmd = [str(Path(sys.executable).parent / "curata"), "collect", "api", str(tmp_path / "shop.json"),
               "-w", str(ws), "--quiet", "--retries", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            server.wait_for(lambda: len(_pages(server, "/products")) >= 3)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        before = _pages(server, "/products")
        journal = next((ws / "cache" / "collect").glob("api-shop-*.jsonl"))
        journaled = [json.loads(line)["n"] + 1 for line in journal.read_text().splitlines()[1:]]
        assert len(journaled) >= 2 and not (ws / "collection.lance").exists()  # killed before ingesting

        slow["on"] = False
        server.clear()
        report = collect_api(Workspace(ws), load_spec(tmp_path / "shop.json"), CollectOptions(download=fast_policy()))
        after = _pages(server, "/products")
    assert report.complete and report.resumed and report.reused == len(journaled)
    assert after[0] == str(len(journaled) + 1)  # resumed right after the last journaled page
    assert set(after).isdisjoint(str(p) for p in journaled)
    assert len(set(before) & set(after)) <= 1  # at most the page in flight when the process was killed
    assert len(Workspace(ws).items()) == N - 5


def _page_body(server: Server, req: Request) -> bytes:
    page, size = int(req.query["page"]), int(req.query["per_page"])
    items = [product(i, server.base) for i in range(1, N + 1)][(page - 1) * size: page * size]
    return json.dumps({"data": {"products": items}, "meta": {"total": N}}).encode()
