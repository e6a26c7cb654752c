"""The web page in a real browser (Debian chromium driven by Playwright) against a real server: the
gallery, filters, search, an item's details and classifying an uploaded image."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM, SCREENS
from test_service_support import COLOURS, PER_COLOUR, draw, running_server

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no browser: /usr/bin/chromium is not installed "
                                 "(apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "web-log")


def serve_page(html: bytes):
    """A page on another port of the same host (another origin, the same site): a web server on loopback that
    answers every GET with `html`. Stop it with `.shutdown()`."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def shot(page, tmp_path: Path, name: str, full_page: bool = False) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / name)
    return path


def test_browse_filter_search_open_and_classify(server, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    page.goto(server.url + "/")

    # The gallery shows every item with its thumbnail, label and colour.
    cards = page.locator("#gallery .card")
    expect(cards).to_have_count(4 * PER_COLOUR)
    expect(page.locator("#status")).to_have_text(f"{4 * PER_COLOUR} items")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    assert shot(page, tmp_path, "gallery.png").stat().st_size > 10_000

    # A colour filter, then a label filter from the select.
    page.click("#f-colours [data-colour='blue']")
    expect(cards).to_have_count(PER_COLOUR)
    labels = page.eval_on_selector_all("#gallery .card .row span:not(.swatch)", "els => els.map(e => e.textContent)")
    assert set(labels) == {"blue"}
    page.click("#clear-filters")
    page.select_option("#f-label", "yellow")
    expect(cards).to_have_count(PER_COLOUR)
    page.click("#clear-filters")

    # Search by text: the index when there is one, otherwise the page says it matched the text only.
    page.fill("#search-text", "stripes")
    page.press("#search-text", "Enter")
    expect(page.locator("#heading")).to_contain_text("stripes")
    expect(page.locator("#status")).to_have_text(re.compile(r"^\d+ (items?|results?)"))
    if "text match only" in page.text_content("#status"):
        expect(cards).to_have_count(8)
    else:
        assert cards.count() > 0
    shot(page, tmp_path, "search.png")
    page.click("#back")

    # Open an item: its text, palette, the bundle's prediction.
    expect(cards).to_have_count(4 * PER_COLOUR)
    page.click("#gallery .card[data-id='demo/green-2']")
    page.wait_for_selector("#item[open]")
    page.wait_for_selector("#item-palette .palette span")
    page.wait_for_selector("#item-predictions .model .big")
    assert "green" in page.text_content("#item-text")
    expect(page.locator("#item-predictions .model .big")).to_have_text("green")
    expect(page.locator("#item-neighbours")).not_to_contain_text("loading", timeout=30_000)
    expect(page.locator("#item-keywords")).not_to_contain_text("loading", timeout=60_000)
    shot(page, tmp_path, "item.png")
    page.click("#item-close")

    # Classify an uploaded image: the model's label and the colours.
    image = tmp_path / "upload.png"
    draw(COLOURS["yellow"], "circle", seed=3).save(image)
    page.set_input_files("#classify-file", str(image))
    page.wait_for_selector("#classify-label")
    expect(page.locator("#classify-label")).to_have_text("yellow")
    page.wait_for_selector("#classify-result .palette span")
    assert "yellow" in page.text_content("#classify-result .palette-legend")
    shot(page, tmp_path, "classify.png", full_page=True)

    # Search by dropping an image: results, or the reason there are none.
    page.set_input_files("#search-file", str(image))
    expect(page.locator("#heading")).to_have_text("Similar to your image")
    expect(page.locator("#status")).not_to_have_text("searching…")
    assert cards.count() > 0 or page.locator("#status.error").count() == 1
    assert js_errors == []
    page.close()


def test_a_keyed_server_a_session_and_another_sites_page(tmp_path_factory, browser, tmp_path):
    """The key goes in once and becomes an HttpOnly cookie; a page on another port of the same host (the
    same *site*, so SameSite=Strict does not stop the cookie) can neither show thumbnails nor act."""
    import httpx
    from playwright.sync_api import expect

    from test_service_support import Server, service_workspace

    key_file = tmp_path / "key"
    key_file.write_text("s3cret")
    srv = Server(service_workspace(tmp_path_factory), "--api-key-file", str(key_file), "--lazy",
                 log=tmp_path / "server.log").wait(headers={"X-API-Key": "s3cret"})
    thumb = f"{srv.url}/v1/item/thumbnail?id=demo%2Fred-0"
    attack = (f'<img id="stolen" src="{thumb}"><iframe name="sink"></iframe>'
              f'<form id="f" method="post" target="sink" action="{srv.url}/v1/models/colour/reload"></form>'
              '<script>document.getElementById("f").submit()</script>').encode()

    evil = serve_page(attack)
    key = {"X-API-Key": "s3cret"}
    try:
        before = httpx.get(f"{srv.url}/v1/models/colour", headers=key).json()["loaded_at"]
        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.url + "/")
        expect(page.locator("#key-banner")).to_be_visible()
        page.fill("#key-input", "s3cret")
        page.click("#key-form button")
        expect(page.locator("#gallery .card")).to_have_count(4 * PER_COLOUR)
        page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && "
                               "i.naturalWidth > 0)")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
        cookies = context.cookies()
        assert [c["name"] for c in cookies] == ["curata_session"] and cookies[0]["httpOnly"]
        # The same browser (cookie and all) visits a page on another port of the same host.
        other = context.new_page()
        other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        other.wait_for_function("() => document.getElementById('stolen').complete")
        assert other.evaluate("document.getElementById('stolen').naturalWidth") == 0
        other.wait_for_timeout(1000)  # the form post has been sent and answered
        assert httpx.get(f"{srv.url}/v1/models/colour", headers=key).json()["loaded_at"] == before
        context.close()
    finally:
        evil.shutdown()
        srv.stop()
