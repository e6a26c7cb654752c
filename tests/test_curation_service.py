"""Curation over HTTP on a real server: scopes, optimistic versions (ETag / If-Match → 409), bulk edits by
ids, filter, cluster and search, undo, the log, and writes refused from other origins or without the custom
header."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from curata.workspace import Workspace
from test_service_support import PER_COLOUR, Server, assert_error, service_workspace

EDITOR_KEY = "editor-key-0123456789"
READER_KEY = "reader-key-0123456789"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of the shared service workspace: these tests write to it."""
    copy = tmp_path_factory.mktemp("curation") / "ws"
    shutil.copytree(service_workspace(tmp_path_factory), copy)
    return copy


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "ed", "key": EDITOR_KEY, "scopes": ["read", "write"]},
                                         {"name": "rita", "key": READER_KEY, "scopes": ["read"]}]}))
    srv = Server(workspace, "--keys-file", str(keys), "--lazy", log=keys.parent / "server.log"
                 ).wait(headers={"X-API-Key": EDITOR_KEY})
    yield srv
    srv.stop()


ED = {"X-API-Key": EDITOR_KEY}
RITA = {"X-API-Key": READER_KEY}


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def item(client: httpx.Client, item_id: str) -> httpx.Response:
    got = client.get("/v1/item", params={"id": item_id}, headers=ED)
    assert got.status_code == 200, got.text
    return got


def test_one_item_edited_with_its_etag_and_a_stale_one_refused(client):
    before = item(client, "demo/red-0")
    assert before.headers["etag"] == '"v0"' and before.json()["version"] == 0
    done = client.post("/v1/edits", headers={**ED, "If-Match": before.headers["etag"]},
                       json={"ids": ["demo/red-0"], "changes": {"label": "crimson", "add_tags": ["hue=deep"]},
                             "why": "test"})
    assert done.status_code == 200, done.text
    assert done.json()["versions"] == {"demo/red-0": 1} and done.json()["changed"] == 1
    after = item(client, "demo/red-0").json()
    assert after["label"] == "crimson" and after["source_label"] == "red" and "hue=deep" in after["tags"]
    assert after["curated"] == ["label", "tags"] and after["version"] == 1
    # A second page that read version 0 tries to write: 409, and the first page's value stays.
    stale = client.post("/v1/edits", headers={**ED, "If-Match": '"v0"'},
                        json={"ids": ["demo/red-0"], "changes": {"label": "scarlet"}})
    assert_error(stale, 409, "edit_conflict", "demo/red-0")
    assert item(client, "demo/red-0").json()["label"] == "crimson"
    log = client.get("/v1/edits", params={"item": "demo/red-0"}, headers=RITA).json()
    assert {e["field"] for e in log["edits"]} == {"label", "tags"} and {e["who"] for e in log["edits"]} == {"ed"}
    assert client.get("/v1/items", params={"label": "crimson"}, headers=ED).json()["total"] == 1


def test_a_read_only_key_gets_403_on_every_write(client):
    for path, body in (("/v1/edits", {"ids": ["demo/red-1"], "changes": {"label": "x"}}),
                       ("/v1/edits/undo", {"batch": "b-x"})):
        assert_error(client.post(path, headers=RITA, json=body), 403, "forbidden")
    assert item(client, "demo/red-1").json()["label"] == "red"


def test_bulk_edits_by_filter_and_cluster_then_undo(client, workspace):
    done = client.post("/v1/edits", headers=ED, json={"where": {"label": "green"}, "changes": {"add_tags": ["ok"]}})
    assert done.status_code == 200, done.text
    assert done.json()["changed"] == PER_COLOUR
    assert client.get("/v1/items", params={"tag": "ok"}, headers=ED).json()["total"] == PER_COLOUR
    undone = client.post("/v1/edits/undo", headers=ED, json={"batch": done.json()["batch"]})
    assert undone.status_code == 200 and undone.json()["changed"] == PER_COLOUR
    assert client.get("/v1/items", params={"tag": "ok"}, headers=ED).json()["total"] == 0
    clustered = client.post("/v1/edits", headers=ED, json={"cluster": {"cluster": 0}, "changes": {"excluded": True}})
    assert clustered.status_code == 200, clustered.text
    excluded = set(clustered.json()["versions"])
    assert excluded and not excluded & set(Workspace(workspace).items(["id"])["id"])  # out of the stages
    assert item(client, sorted(excluded)[0]).json()["excluded"] is True
    assert_error(client.post("/v1/edits", headers=ED, json={"where": {"label": "no-such"}, "changes": {"label": "x"}}),
                 404, "nothing_selected")
    assert_error(client.post("/v1/edits/undo", headers=ED, json={"batch": "b-unknown"}), 404, "unknown_edit")


def test_malformed_edits_get_the_one_error_shape(client):
    assert_error(client.post("/v1/edits", headers=ED, json={"ids": ["demo/red-2"], "where": {"label": "red"},
                                                            "changes": {"label": "x"}}), 422)
    assert_error(client.post("/v1/edits", headers=ED, json={"ids": ["demo/red-2"], "changes": {}}), 422, "bad_edit")
    assert_error(client.post("/v1/edits", headers=ED, json={"ids": ["demo/red-2"], "changes": {"tags": "a"}}), 422)
    assert_error(client.post("/v1/edits", headers=ED, json={"ids": ["nope"], "changes": {"label": "x"}}), 404,
                 "unknown_item")
    assert_error(client.post("/v1/edits", headers={**ED, "If-Match": "garbage"},
                             json={"ids": ["demo/red-2"], "changes": {"label": "x"}}), 422)
    assert_error(client.post("/v1/edits", headers=ED, json={"ids": ["demo/red-2"], "changes": {"label": "  "}}), 422)
    assert_error(client.post("/v1/edits", headers=ED, json={"where": {}, "changes": {"label": "x"}}), 422)
    assert_error(client.post("/v1/edits/undo", headers=ED, json={"batch": "b", "edit_ids": ["e"]}), 422)
    assert_error(client.post("/v1/edits", headers=ED, content=b"{not json", ), 422)


def test_writes_from_another_origin_or_without_the_custom_header_are_refused(client):
    body = {"ids": ["demo/blue-0"], "changes": {"label": "navy"}}
    other_site = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert_error(client.post("/v1/edits", headers={**ED, **other_site}, json=body), 403, "cross_origin")
    other_port = {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"}  # same host, another port
    session = client.post("/v1/session", headers=ED)
    cookie = {"Cookie": f"curata_session={session.cookies['curata_session']}"}
    client.cookies.clear()
    assert_error(client.post("/v1/edits", headers={**cookie, **other_port}, json=body), 403, "cross_origin")
    same = {**cookie, "Sec-Fetch-Site": "same-origin"}
    assert_error(client.post("/v1/edits", headers=same, json=body), 403, "missing_header")
    ok = client.post("/v1/edits", headers={**same, "X-Curata-Client": "page"}, json=body)
    assert ok.status_code == 200, ok.text
    assert item(client, "demo/blue-0").json()["label"] == "navy"


def test_a_keyless_server_is_read_only_unless_allowed(workspace, tmp_path):
    body = {"ids": ["demo/yellow-0"], "changes": {"label": "gold"}}
    srv = Server(workspace, "--lazy", log=tmp_path / "ro.log").wait()
    try:
        assert_error(httpx.post(f"{srv.url}/v1/edits", headers={"X-Curata-Client": "t"}, json=body), 403,
                     "read_only")
    finally:
        srv.stop()
    srv = Server(workspace, "--lazy", "--allow-writes", "--max-bulk-edit", "3", log=tmp_path / "rw.log").wait()
    try:
        assert_error(httpx.post(f"{srv.url}/v1/edits", json=body), 403, "missing_header")  # a simple request
        too_many = {"where": {"collection": "swatches"}, "changes": {"add_tags": ["x"]}}
        assert_error(httpx.post(f"{srv.url}/v1/edits", headers={"X-Curata-Client": "t"}, json=too_many), 413,
                     "too_many_items")
        done = httpx.post(f"{srv.url}/v1/edits", headers={"X-Curata-Client": "t"}, json=body)
        assert done.status_code == 200, done.text
        assert done.json()["edits"][0]["who"] == "anonymous"
    finally:
        srv.stop()


def test_concurrent_edits_are_grouped_and_one_stale_write_wins_only_once(client):
    def edit(item: str, tag: str, etag: str | None = None) -> httpx.Response:
        headers = {**ED, **({"If-Match": etag} if etag else {})}
        return client.post("/v1/edits", headers=headers, json={"ids": [item], "changes": {"add_tags": [tag]}})

    items = [f"demo/{c}-{i}" for c in ("green", "yellow") for i in range(1, 6)]
    with ThreadPoolExecutor(10) as pool:
        done = list(pool.map(lambda it: edit(it, "batch=1"), items))
    assert all(r.status_code == 200 for r in done), [r.text for r in done if r.status_code != 200]
    assert len({r.json()["batch"] for r in done}) == len(items)  # each its own batch, whatever the grouping
    found = client.get("/v1/items", params={"tag": "batch=1", "limit": 50}, headers=ED).json()
    assert sorted(i["id"] for i in found["items"]) == sorted(items)
    # Eight pages that all read version v of one item write at once: exactly one succeeds.
    etag = item(client, "demo/yellow-5").headers["etag"]
    with ThreadPoolExecutor(8) as pool:
        raced = list(pool.map(lambda n: edit("demo/yellow-5", f"race={n}", etag), range(8)))
    assert sorted(r.status_code for r in raced) == [200] + [409] * 7
    tags = item(client, "demo/yellow-5").json()["tags"]
    assert sum(t.startswith("race=") for t in tags) == 1


def test_download_the_curated_collection(client, workspace):
    import csv
    import io
    import zipfile

    def export(**params: str) -> tuple[httpx.Response, dict[str, dict]]:
        got = client.get("/v1/export", params=params, headers=ED)
        assert got.status_code == 200, got.text
        return got, {r["id"]: r for r in csv.DictReader(io.StringIO(got.text))}

    _, before = export()
    target = sorted(before)[0]
    client.post("/v1/edits", headers=ED, json={"ids": [target], "changes": {"label": "=HYPERLINK(1)"}})
    got, rows = export(format="csv")
    assert "attachment" in got.headers["content-disposition"] and ".csv" in got.headers["content-disposition"]
    assert len(rows) == int(got.headers["x-curata-items"]) == len(before)
    assert rows[target]["label"] == "'=HYPERLINK(1)" and rows[target]["source_label"] == before[target]["source_label"]
    assert all(r["excluded"] != "true" for r in rows.values())
    _, source = export(values="source")
    assert source[target]["label"] == before[target]["source_label"]
    archive = client.get("/v1/export", params={"format": "erc721"}, headers=RITA)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert len(names) == len(rows) and all(n.endswith(".json") for n in names)
    assert_error(client.get("/v1/export", params={"format": "xls"}, headers=ED), 422)
    deadline = time.monotonic() + 10  # each download's scratch copy goes once the response is sent
    while list((workspace / "cache").glob("export-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((workspace / "cache").glob("export-*"))


def test_edits_acknowledged_by_a_server_killed_at_once_are_all_kept(workspace, tmp_path):
    """A power cut right after the answers: the edits were journaled (fsync) before each 200, and the first
    reader afterwards writes them into the tables."""
    from curata.curation import Curation
    from curata.edit_journal import EditJournal

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "ed", "key": EDITOR_KEY, "scopes": ["read", "write"]}]}))
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy)
    before = Curation(Workspace(copy)).count()
    srv = Server(copy, "--keys-file", str(keys), "--lazy", log=tmp_path / "server.log").wait(headers=ED)
    try:
        items = [f"demo/blue-{i}" for i in range(6)]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            done = [c.post("/v1/edits", headers=ED, json={"ids": [it], "changes": {"label": "sky"}}) for it in items]
        assert all(r.status_code == 200 for r in done), [r.text for r in done]
        srv.proc.kill()  # SIGKILL: no shutdown, no flush
        srv.proc.wait(30)
    finally:
        srv.stop()
    ws = Workspace(copy)
    labels = ws.items(["id", "label"], include_excluded=True).set_index("id")["label"]  # a reader applies what waits
    assert all(labels[it] == "sky" for it in items)
    assert not EditJournal(copy).pending() and Curation(ws).count() == before + len(items)


def test_the_service_writes_journaled_edits_into_the_tables_by_itself(client, workspace):
    from curata.collection import Collection
    from curata.edit_journal import EditJournal

    done = client.post("/v1/edits", headers=ED, json={"ids": ["demo/red-3"], "changes": {"label": "brick"}})
    assert done.status_code == 200, done.text
    deadline = time.monotonic() + 20
    while EditJournal(workspace).pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not EditJournal(workspace).pending()  # no reader came: the applier thread did it
    stored = Collection(workspace).by_ids(["demo/red-3"], ["label", "edit_version"]).iloc[0]  # the table itself
    assert stored["label"] == "brick" and stored["edit_version"] == done.json()["versions"]["demo/red-3"]
