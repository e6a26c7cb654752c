"""fxhash collector against a loopback GraphQL server shaped like api.fxhash.xyz (no internet)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from curata.cli import app
from curata.collect import CollectOptions, FxhashQuery, collect_fxhash
from curata.workspace import Workspace
from test_collect_support import Reply, Request, Server, dead_port, fast_policy, png

PROJECTS: dict[int, dict[str, Any]] = {
    101: {"id": 101, "name": "Flow Study", "slug": "flow-study", "tags": ["generative", "flow field"],
          "metadata": {"description": "Lines that follow a noise field."}, "author": {"id": "tz1ada", "name": "ada"},
          "supply": 5, "objktsCount": 5},
    202: {"id": 202, "name": "Pixel Garden", "slug": "pixel-garden", "tags": ["pixel"],
          "metadata": {"description": "Tiny gardens."}, "author": {"id": "tz1bob", "name": None},
          "supply": 4, "objktsCount": 4},
    303: {"id": 303, "name": "Circle Study", "slug": "circle-study", "tags": ["circles"],
          "metadata": {"description": "Packed circles."}, "author": {"id": "tz1cy", "name": "cy"},
          "supply": 5, "objktsCount": 5},
}


def _objkt(pid: int, i: int) -> dict[str, Any]:
    name = f"{PROJECTS[pid]['name']} #{i}"
    uri = f"ipfs://QmCid{pid}/{i}.png"
    features = [{"name": "Palette", "value": ["warm", "cold"][i % 2]}, {"name": "Density", "value": i}]
    objkt = {"id": pid * 1000 + i, "iteration": i, "name": name, "slug": f"{PROJECTS[pid]['slug']}-{i}",
             "metadata": {"name": name, "description": PROJECTS[pid]["metadata"]["description"],
                          "displayUri": uri, "thumbnailUri": f"ipfs://QmThumb{pid}/{i}.png",
                          "attributes": features},
             "features": features, "displayUri": uri, "thumbnailUri": f"ipfs://QmThumb{pid}/{i}.png"}
    if pid == 202 and i == 2:  # an iteration whose capture never happened: no image anywhere
        objkt["displayUri"] = objkt["thumbnailUri"] = None
        objkt["metadata"].pop("displayUri")
        objkt["metadata"].pop("thumbnailUri")
    return objkt


OBJKTS = {pid: [_objkt(pid, i) for i in range(p["supply"])] for pid, p in PROJECTS.items()}


def fxhash_route(req: Request) -> Reply:
    """Answer like the fxhash API: GraphQL POSTs on /graphql, IPFS files on /ipfs/."""
    if req.method == "GET" and req.path.startswith("/ipfs/QmCid"):
        cid, name = req.path.removeprefix("/ipfs/QmCid").split("/")
        return Reply(body=png(int(cid) * 1000 + int(name.split(".")[0])), ctype="image/png")
    if req.method != "POST" or req.path != "/graphql":
        return Reply(404, b"Not Found", "text/plain")
    query, variables = req.body["query"], req.body.get("variables") or {}
    skip, take = variables.get("skip") or 0, variables.get("take") or 20
    if "generativeTokens(" in query:
        filters = variables.get("filters") or {}
        found = sorted(PROJECTS.values(), key=lambda p: -p["id"])
        if "id_in" in filters:
            found = [p for p in found if p["id"] in filters["id_in"]]
        if filters.get("searchQuery_eq"):
            found = [p for p in found if filters["searchQuery_eq"].lower() in p["name"].lower()]
        return Reply.json({"data": {"generativeTokens": found[skip: skip + take]}})
    if "generativeToken(id" in query:
        pid = int(variables["id"])
        if pid not in PROJECTS:
            return Reply.json({"data": {"generativeToken": None}})
        return Reply.json({"data": {"generativeToken": {"id": pid, "objkts": OBJKTS[pid][skip: skip + take]}}})
    return Reply.json({"errors": [{"message": "Cannot query field"}], "data": None}, code=400)


def _options(server: Server, **kw: Any) -> CollectOptions:
    gateways = (f"http://127.0.0.1:{dead_port()}/ipfs/", f"{server.base}/ipfs/")  # first gateway is down
    return CollectOptions(download=fast_policy(ipfs_gateways=gateways), **kw)


def _iteration_pages(server: Server, ok_only: bool = False) -> list[tuple[int, int]]:
    """(project id, skip) of every iterations request the server received (or answered with 200)."""
    return [(r.body["variables"]["id"], r.body["variables"]["skip"]) for r in server.requests("POST")
            if "generativeToken(id" in r.body["query"] and (r.code == 200 or not ok_only)]


def test_tokens_become_items_with_tags_features_and_a_rerun_fetches_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with Server() as server:
        def route(req: Request) -> Reply:
            if req.method == "POST" and len(server.requests("POST")) == 1:  # the very first request: rate limited
                return Reply(429, b'{"errors":[{"message":"Too many requests"}]}', headers={"Retry-After": "0"})
            return fxhash_route(req)

        server.route = route
        query = FxhashQuery(endpoint=f"{server.base}/graphql", tokens=(101, 202, 999), page_size=2,
                            iterations_per_project=10)
        report = collect_fxhash(ws, query, _options(server))

        assert report.failures == [{"ref": "fxhash generative token 999", "reason": "not found"}]
        assert report.complete and not report.resumed
        ingest = report.ingest
        assert ingest is not None and ingest.format == "fxhash"
        assert len(ingest.ok) == 8 and [e.code for e in ingest.errors] == ["missing_image"]
        # take/skip paging: 101 has 5 iterations -> skips 0, 2, 4; 202 has 4 -> 0, 2, then a short page at 4
        assert sorted(set(_iteration_pages(server))) == [(101, 0), (101, 2), (101, 4), (202, 0), (202, 2), (202, 4)]

        items = ws.items().set_index("id")
        assert len(items) == 8 and all(i.startswith("fxhash/") for i in items.index)
        item = items.loc["fxhash/101003"]
        assert item["collection"] == "Flow Study" and item["label"] == "Flow Study"
        assert list(item["tags"]) == ["generative", "flow field", "Palette=cold", "Density=3"]
        assert item["text"] == "Flow Study #3. Lines that follow a noise field."
        assert list(item["captions"]) == ["A picture of Flow Study #3, containing cold Palette, 3 Density"]
        meta = json.loads(item["meta"])
        assert meta["generative_token_id"] == 101 and meta["author_name"] == "ada"
        assert items.loc["fxhash/202000", "collection"] == "Pixel Garden"

        server.clear()
        again = collect_fxhash(ws, query, _options(server))
        assert server.requests() == []  # neither GraphQL nor image requests: all from the journal and cache
        assert again.resumed and again.complete and again.requests == 0
        assert again.ingest is not None and again.ingest.unchanged == 8 and again.ingest.added == 0


def test_search_max_items_and_a_failing_server_resume_without_refetching(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    healthy = threading.Event()
    healthy.set()
    with Server() as server:
        budget = {"left": 10**6}

        def route(req: Request) -> Reply:
            if req.method == "POST" and not healthy.is_set():
                if budget["left"] <= 0:
                    return Reply(500, b"Internal Server Error", "text/plain")
                budget["left"] -= 1
            return fxhash_route(req)

        server.route = route
        query = FxhashQuery(endpoint=f"{server.base}/graphql", search="study", limit_projects=2,
                            iterations_per_project=5, page_size=2)

        first = collect_fxhash(ws, query, _options(server, concurrency=1, max_items=3))
        assert first.ingest is not None and first.records == 3 and not first.complete
        assert len(ws.items()) == 3

        healthy.clear()  # the server now dies after two more GraphQL answers
        budget["left"] = 2
        second = collect_fxhash(ws, query, _options(server, concurrency=1))
        assert not second.complete and second.failures
        assert "HTTP 500" in second.failures[0]["reason"] and "after 3 attempts" in second.failures[0]["reason"]

        healthy.set()
        third = collect_fxhash(ws, query, _options(server, concurrency=1))
        assert third.complete and not third.failures

    # Every page answered exactly once over the three runs: nothing done was fetched again.
    answered = _iteration_pages(server, ok_only=True)
    assert len(answered) == len(set(answered)) == 6
    assert sorted(set(_iteration_pages(server))) == [(101, 0), (101, 2), (101, 4), (303, 0), (303, 2), (303, 4)]
    assert sum(1 for r in server.requests("POST") if "generativeTokens(" in r.body["query"]) == 1
    images = [r.path for r in server.requests("GET", "/ipfs/QmCid") if r.code == 200]
    assert len(images) == len(set(images)) == 10  # each image downloaded once across all runs
    assert sorted(ws.items()["collection"].unique()) == ["Circle Study", "Flow Study"]
    assert len(ws.items()) == 10


def test_graphql_errors_truncated_answers_and_cli_json(tmp_path: Path) -> None:
    with Server() as server:
        def route(req: Request) -> Reply:
            if req.method == "POST" and "generativeToken(id" in req.body["query"]:
                pid = req.body["variables"]["id"]
                if pid == 202:  # a GraphQL error is a failure with the server's message, not retried
                    return Reply.json({"errors": [{"message": "Query complexity limit exceeded"}], "data": None})
                if req.hit == 1:  # a truncated answer is retried
                    reply = fxhash_route(req)
                    return Reply(body=reply.body, send_only=len(reply.body) // 2)
            return fxhash_route(req)

        server.route = route
        dead = f"http://127.0.0.1:{dead_port()}/ipfs/"
        result = CliRunner().invoke(app, [
            "collect", "fxhash", "--endpoint", f"{server.base}/graphql", "--token", "101", "--token", "202",
            "--iterations-per-project", "3", "--page-size", "5", "--workspace", str(tmp_path / "ws"),
            "--ipfs-gateway", dead, "--ipfs-gateway", f"{server.base}/ipfs/", "--retries", "2", "--timeout", "2",
            "--json",
        ])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["summary"]["collector"] == "fxhash" and out["summary"]["ingest"]["ok"] == 3
    assert out["failures"] == [{"ref": "fxhash generative token 202 iterations skip=0",
                                "reason": "GraphQL error: Query complexity limit exceeded"}]
    assert not out["summary"]["complete"]
    assert {e["id"] for e in out["entries"]} == {"fxhash/101000", "fxhash/101001", "fxhash/101002"}


def test_query_is_checked() -> None:
    with pytest.raises(ValueError, match="image must be"):
        FxhashQuery(image="full")
    with pytest.raises(ValueError, match="at least 1"):
        FxhashQuery(limit_projects=0)
