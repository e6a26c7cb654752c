"""Curating in a real browser (Debian chromium, Playwright) against a real server over a workspace with
injected label noise and missing tags: 20 suspicious labels resolved and 20 tag suggestions accepted with the
keyboard only, then the workspace holds exactly those edits; undo; a read-only key gets 403 on every write;
two pages editing one item (one gets 409 and sees the other's value); bulk edits from the gallery; a page on
another port cannot write."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import CHROMIUM
from test_service_support import Server, draw
from test_web import serve_page, shot

EDITOR, EDITOR_2, READER = "editor-key-0123456789", "second-editor-key-0123", "reader-key-0123456789"
COLOURS = {"red": (210, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 210), "yellow": (235, 210, 30)}
PER = 30

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no browser: /usr/bin/chromium is not installed "
                                 "(apt-get install chromium)")]


def build(root: Path) -> Path:
    """120 drawn images; in every colour every 5th item labelled as the next colour (24 flipped labels) and
    the item after it without its hue tag (24 missing tags); colour statistics, a real quality run and a
    real tags bundle."""
    from curata.collection import Item, items_to_frame
    from curata.features.engine import compute, make_extractor
    from curata.quality import quality_workspace
    from curata.tasks.runner import TrainOptions, run
    from curata.workspace import Workspace

    names = list(COLOURS)
    items = []
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(PER):
            path = root / "img" / f"{name}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(rgb, ("circle", "square", "stripes")[i % 3], seed=c * PER + i).save(path)
            label = names[(c + 1) % 4] if i % 5 == 0 else name
            tags = [f"hue={name}", f"tone={'warm' if name in ('red', 'yellow') else 'cool'}"]
            if i % 5 == 1:
                tags = tags[1:]
            items.append(Item(id=f"s/{name}-{i}", source="s", collection="swatches", image=str(path),
                              image_sha256=f"sha-{name}-{i}", width=64, height=64, label=label, tags=tags))
    ws = Workspace(root / "ws").create()
    ws.add_items(items_to_frame(items))
    compute(make_extractor("color_stats"), ws)
    quality_workspace(ws, ["color_stats"])
    run(ws, TrainOptions(task="tags", target="tags", features=["color_stats"], folds=3, min_tag_count=3,
                         name="hues"))
    return ws.root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("curate-web"))


@pytest.fixture(scope="module")
def server(workspace, tmp_path_factory):
    keys = tmp_path_factory.mktemp("curate-keys") / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"name": "ed", "key": EDITOR, "scopes": ["read", "write"]},
        {"name": "eve", "key": EDITOR_2, "scopes": ["read", "write"]},
        {"name": "rita", "key": READER, "scopes": ["read"]}]}))
    srv = Server(workspace, "--keys-file", str(keys), "--lazy", log=keys.parent / "server.log"
                 ).wait(headers={"X-API-Key": EDITOR})
    yield srv
    srv.stop()


def signed_in(browser, server, key: str):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#key-banner")).to_be_visible()
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    expect(page.locator("#gallery .card")).to_have_count(48)
    return context, page


def review_image_shown(page) -> None:
    """The review card's picture is the current proposal's, loaded and visible."""
    page.wait_for_function("() => { const i = document.getElementById('review-img'); return i.complete && "
                           "i.naturalWidth > 0 && i.style.visibility !== 'hidden' && "
                           "decodeURIComponent(i.src).includes(i.alt); }", timeout=30_000)


def decide_with_keys(page, key: str, times: int, done_before: int) -> None:
    from playwright.sync_api import expect

    for n in range(times):
        page.keyboard.press(key)
        expect(page.locator("#review-progress")).to_contain_text(f"{done_before + n + 1} done", timeout=30_000)


def test_curating_with_the_keyboard_and_the_edit_log(server, browser, workspace, tmp_path):
    from playwright.sync_api import expect

    from curata.curation import Curation
    from curata.workspace import Workspace

    context, page = signed_in(browser, server, EDITOR)
    page.click("#mode-review")
    expect(page.locator("#review-queues .chip[data-queue='labels']")).to_have_class("chip active")
    expect(page.locator("#review-card")).to_be_visible(timeout=60_000)  # the first read builds the queue
    left = int(page.locator("#review-progress").inner_text().split("·")[1].split()[0])
    assert left >= 20, page.locator("#review-progress").inner_text()
    expect(page.locator("#review-proposal")).to_contain_text("label →")
    review_image_shown(page)
    shot(page, tmp_path, "curate-review-labels.png")
    decide_with_keys(page, "a", 20, 0)
    page.click("#review-queues .chip[data-queue='tags']")
    expect(page.locator("#review-proposal")).to_contain_text("add tag", timeout=60_000)
    review_image_shown(page)
    shot(page, tmp_path, "curate-review-tags.png")
    decide_with_keys(page, "a", 20, 0)

    edits = Curation(Workspace(workspace)).log(limit=None)
    labels = [e for e in edits if e["why"] == "review:labels"]
    tags = [e for e in edits if e["why"] == "review:tags"]
    assert len(edits) == 40 and len(labels) == 20 and len(tags) == 20
    assert {e["field"] for e in labels} == {"label"} and {e["field"] for e in tags} == {"tags"}
    assert {e["who"] for e in edits} == {"ed"}
    # Every accepted label is the item's true colour (the flipped labels were put right), every tag a hue.
    assert all(e["after"] == e["item"].split("/")[1].split("-")[0] for e in labels), labels
    assert all(set(e["after"]) - set(e["before"]) == {f"hue={e['item'].split('/')[1].split('-')[0]}"}
               for e in tags), tags
    items = Workspace(workspace).items(["id", "label", "source_label"]).set_index("id")
    for e in labels:
        assert items.loc[e["item"], "label"] == e["after"] != items.loc[e["item"], "source_label"]

    page.keyboard.press("u")  # undo the newest tag decision
    expect(page.locator("#status")).to_contain_text("undone")
    expect(page.locator("#review-progress")).to_contain_text("19 done")
    last = tags[0]  # newest first
    now = Workspace(workspace).collection.by_ids([last["item"]], ["id", "tags"])["tags"].iloc[0]
    assert list(now) == last["before"]

    # An item's page shows its history, with who did what and why.
    page.click("#mode-browse")
    page.select_option("#f-label", labels[0]["after"])  # the corrected label: the item is listed under it
    page.click(f"#gallery .card[data-id='{labels[0]['item']}']")
    expect(page.locator("#item-history li").first).to_contain_text("review:labels")
    expect(page.locator("#item-history")).to_contain_text("ed")
    shot(page, tmp_path, "curate-item-history.png")
    context.close()


def test_two_pages_editing_one_item(server, browser, tmp_path):
    from playwright.sync_api import expect

    item = "s/green-5"
    pages = []
    for key in (EDITOR, EDITOR_2):
        context, page = signed_in(browser, server, key)
        page.select_option("#f-label", "green")  # an edited item moves to the end of the table: filter to it
        page.click(f"#gallery .card[data-id='{item}']")
        expect(page.locator("#edit-state")).to_contain_text("version")
        pages.append((context, page))
    (c1, first), (c2, second) = pages
    first.fill("#edit-label", "olive")
    first.click("#edit-save")
    expect(first.locator("#edit-message")).to_have_text("saved")
    second.fill("#edit-label", "lime")
    second.click("#edit-save")
    expect(second.locator("#edit-message")).to_contain_text("Someone else changed this item")
    expect(second.locator("#edit-label")).to_have_value("olive")  # the other page's value, not ours
    expect(second.locator("#item-meta")).to_contain_text("label: olive")
    shot(second, tmp_path, "curate-conflict.png")
    got = httpx.get(f"{server.url}/v1/item", params={"id": item}, headers={"X-API-Key": EDITOR}).json()
    assert got["label"] == "olive" and got["version"] >= 1
    c1.close()
    c2.close()


def test_bulk_edit_from_the_gallery_selection(server, browser, tmp_path):
    from playwright.sync_api import expect

    context, page = signed_in(browser, server, EDITOR)
    expect(page.locator("#select-bar")).to_be_hidden()
    page.select_option("#f-label", "red")
    picked = ["s/red-1", "s/red-2", "s/red-4"]
    for item in picked:
        page.locator(f".tile:has(.card[data-id='{item}']) .pick input").check()
    expect(page.locator("#select-bar")).to_be_visible()
    expect(page.locator("#select-count")).to_have_text("3 selected")
    page.locator(f".tile:has(.card[data-id='{picked[-1]}']) .pick input").uncheck()
    expect(page.locator("#select-count")).to_have_text("2 selected")
    page.locator(f".tile:has(.card[data-id='{picked[-1]}']) .pick input").check()
    page.fill("#bulk-tag", "checked=yes")
    shot(page, tmp_path, "curate-selection.png")
    page.click("#bulk-add-tag")
    expect(page.locator("#status")).to_contain_text("3 items changed")
    found = httpx.get(f"{server.url}/v1/items", params={"tag": "checked=yes"}, headers={"X-API-Key": EDITOR}).json()
    assert sorted(i["id"] for i in found["items"]) == picked
    page.click("#status-undo")
    expect(page.locator("#status")).to_contain_text("undone: 3 items put back")
    context.close()


def test_a_read_only_key_cannot_write_and_nor_can_another_sites_page(server, browser, workspace):
    from playwright.sync_api import expect

    from curata.curation import Curation
    from curata.workspace import Workspace

    before = Curation(Workspace(workspace)).count()
    reader = {"X-API-Key": READER}
    writes = [("/v1/edits", {"ids": ["s/red-1"], "changes": {"label": "x"}}), ("/v1/edits/undo", {"batch": "b-1"}),
              ("/v1/review/labels/decisions", {"proposal_id": "abc", "decision": "accept"}),
              ("/v1/review/tags/undo", {})]
    for path, body in writes:
        got = httpx.post(f"{server.url}{path}", headers=reader, json=body)
        assert got.status_code == 403 and got.json()["error"]["code"] == "forbidden", (path, got.text)
    context, page = signed_in(browser, server, READER)
    page.click("#mode-review")
    expect(page.locator("#review-card")).to_be_visible(timeout=60_000)
    page.keyboard.press("a")
    expect(page.locator("#status")).to_contain_text("may only read")

    # A page on another port of the same host, in the same browser (cookie and all), tries both ways.
    target = f"{server.url}/v1/edits"
    attack = (f'<iframe name="sink"></iframe><form id="f" method="post" target="sink" action="{target}" '
              'enctype="text/plain"><input name=\'{"ids": ["s/red-1"], "changes": {"label": "pwned"}, "x": "\' '
              'value=\'"}\'></form><script>document.getElementById("f").submit();'
              f'fetch("{target}", {{method: "POST", credentials: "include", headers: {{"Content-Type": '
              '"application/json", "X-Curata-Client": "page"}, body: JSON.stringify({ids: ["s/red-1"], changes: '
              '{label: "pwned"}})}).catch(() => { document.title = "refused"; });</script>').encode()

    evil = serve_page(attack)
    try:
        editor_context, _ = signed_in(browser, server, EDITOR)
        other = editor_context.new_page()
        other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        expect(other).to_have_title("refused")  # the preflight is refused: the fetch never goes out
        other.wait_for_timeout(1000)  # the form post has been sent and answered
        editor_context.close()
    finally:
        evil.shutdown()
    label = httpx.get(f"{server.url}/v1/item", params={"id": "s/red-1"}, headers=reader).json()["label"]
    assert label != "pwned" and Curation(Workspace(workspace)).count() == before
    context.close()
