"""ERC-721 collector against a loopback server: every way a token URI goes wrong, and a resuming rerun."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from curata.cli import app
from curata.collect import CollectOptions, collect_erc721, expand_range
from curata.collect.erc721 import token_local_id
from curata.workspace import Workspace
from test_collect_support import Reply, Request, Server, dead_port, fast_policy, png

HTML = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>captcha</body></html>"


def _noise_png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), random.Random(1).randbytes(size * size * 3)).save(buf, format="PNG")
    return buf.getvalue()


def token(n: int, image: str) -> dict:
    return {"name": f"Test Punk #{n}", "description": "A punk made by a test.", "image": image,
            "attributes": [{"trait_type": "hair", "value": ["mohawk", "cap"][n % 2]},
                           {"trait_type": "eyes", "value": "none"}]}


def make_route(server: Server, healed: threading.Event):
    big = _noise_png()

    def route(req: Request) -> Reply:
        path = req.path
        if path.startswith("/img/") or path.startswith("/ipfs/QmImg/"):
            name = path.rsplit("/", 1)[-1]
            if name == "big.png":
                return Reply(body=big, ctype="image/png")
            if name == "html.png":
                return Reply(body=HTML, ctype="image/png")
            if name == "ratelimited.png" and req.hit == 1:
                return Reply(429, b"slow down", "text/plain", headers={"Retry-After": "0"})
            return Reply(body=png(len(name)), ctype="image/png")
        if path == "/ipfs/QmMeta/2":
            return Reply.json(token(2, f"{server.base}/img/2.png"))
        if not path.startswith("/meta/"):
            return Reply(404, b"not found", "text/plain")
        n = int(path.removeprefix("/meta/").removesuffix(".json"))
        good = Reply.json(token(n, "ipfs://QmImg/1.png" if n == 1 else f"{server.base}/img/{n}.png"))
        if n == 9:  # over the JSON size cap, healed or not
            return Reply.json({**token(9, f"{server.base}/img/9.png"), "description": "x" * 5000})
        if healed.is_set() or n in (1, 3):
            return good
        if n == 4 and req.hit == 1:
            return Reply(500, b"oops", "text/plain")
        if n == 5:
            return Reply(body=good.body, delay=3.0)
        if n == 6:
            return Reply(body=good.body, send_only=20)
        if n == 7:
            return Reply(body=b'{"name": "Test Punk #7",', ctype="application/json")
        if n == 8:
            return Reply(body=HTML, ctype="application/json")
        if n == 10:
            return Reply.json(token(10, f"{server.base}/img/big.png"))
        if n == 11:
            return Reply.json(token(11, f"{server.base}/img/html.png"))
        if n == 12:
            return Reply.json(token(12, f"{server.base}/img/ratelimited.png"))
        return good

    return route


def test_token_uris_every_failure_mode_and_a_rerun_fetches_only_what_failed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    healed = threading.Event()
    with Server() as server:
        server.route = make_route(server, healed)
        data_uri = "data:application/json;base64," + base64.b64encode(
            json.dumps(token(3, f"{server.base}/img/3.png")).encode()).decode()
        uris = [f"{server.base}/meta/1.json", "ipfs://QmMeta/2", data_uri,
                *(f"{server.base}/meta/{n}.json" for n in range(4, 13))]
        gateways = (f"http://127.0.0.1:{dead_port()}/ipfs/", f"{server.base}/ipfs/")
        options = CollectOptions(download=fast_policy(retries=1, timeout=0.5, max_bytes=3000, ipfs_gateways=gateways),
                                 json_max_bytes=2000, concurrency=6, source_name="punks")

        report = collect_erc721(ws, uris, options, label_trait="hair")
        reasons = {f["ref"].rsplit("/", 1)[-1]: f["reason"] for f in report.failures}
        assert reasons["5.json"].startswith("timed out")
        assert reasons["6.json"].startswith("truncated body")
        assert reasons["7.json"].startswith("invalid JSON")
        assert "body looks like text/html" in reasons["8.json"]
        assert "exceeds size cap" in reasons["9.json"]
        assert len(reasons) == 5 and not report.complete

        ingest = report.ingest
        assert ingest is not None
        by_id = {e.id: e for e in ingest.entries}
        ok = {i for i, e in by_id.items() if e.status == "ok"}
        assert ok == {"punks/1", "punks/2", f"punks/{token_local_id(data_uri)}", "punks/4", "punks/12"}
        assert by_id["punks/5"].code == "metadata_failed"
        assert by_id["punks/10"].code == "download_failed" and "size cap" in by_id["punks/10"].reason
        assert by_id["punks/11"].code == "download_failed" and "text/html" in by_id["punks/11"].reason
        items = ws.items().set_index("id")
        assert list(items.loc["punks/1", "tags"]) == ["hair=cap", "eyes=none"]
        assert items.loc["punks/1", "label"] == "cap" and items.loc["punks/2", "collection"] == "Test Punk"
        assert list(items.loc["punks/4", "captions"]) == ["A picture of Test Punk #4, containing mohawk hair"]

        # Heal the server; the rerun asks only for the token documents that failed and the missing images.
        healed.set()
        server.clear()
        again = collect_erc721(ws, uris, options, label_trait="hair")
        fetched = sorted(r.path for r in server.requests("GET", "/meta/"))
        assert fetched == sorted(f"/meta/{n}.json" for n in (5, 6, 7, 8, 9))
        images = sorted(r.path for r in server.requests("GET") if not r.path.startswith("/meta/"))
        # 10 and 11 keep their journaled documents (fetched fine), so their bad images are tried again
        assert images == ["/img/5.png", "/img/6.png", "/img/7.png", "/img/8.png", "/img/big.png", "/img/html.png"]
        assert again.resumed and again.reused == 7 and again.fetched == 4
        assert [f["ref"].rsplit("/", 1)[-1] for f in again.failures] == ["9.json"]  # still over the JSON cap
        assert again.ingest is not None and len(again.ingest.ok) == 9


def test_cli_uri_template_range_and_max_items(tmp_path: Path) -> None:
    with Server() as server:
        server.route = make_route(server, threading.Event())
        args = ["collect", "erc721", "--uri-template", f"{server.base}/meta/{{id}}.json", "--ids", "1,3-4",
                "--workspace", str(tmp_path / "ws"), "--source-name", "punks", "--max-items", "2", "--json",
                "--ipfs-gateway", f"{server.base}/ipfs/"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert [e["id"] for e in out["entries"]] == ["punks/1", "punks/3"]
        assert len(server.requests("GET", "/meta/")) == 2
        bad = CliRunner().invoke(app, ["collect", "erc721", "--ids", "1-3", "--workspace", str(tmp_path / "ws")])
        assert bad.exit_code == 2 and "--uri-template and --ids go together" in bad.output


def test_helpers() -> None:
    assert expand_range("ipfs://Qm/{id}", "1,5-7") == ["ipfs://Qm/1", "ipfs://Qm/5", "ipfs://Qm/6", "ipfs://Qm/7"]
    with pytest.raises(ValueError, match="end before start"):
        expand_range("ipfs://Qm/{id}", "9-2")
    assert token_local_id("ipfs://QmCid/42") == "42"
    assert token_local_id("https://api.example.com/token/7.json") == "7"
    assert len(token_local_id("https://api.example.com/token?id=7")) == 16  # a hash: the path says nothing
