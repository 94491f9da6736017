"""The web playground: served by the app, and used for real in headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import KEY_A
from tests.support.images import image_bytes
from tests.support.server import ServerProcess

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMAGE_SHOWN = """() => [...document.querySelectorAll('#result img')].some(
    (img) => img.src.includes('/v1/files/') && img.complete && img.naturalWidth > 0)"""


def test_the_page_and_its_assets_are_served(server: ServerProcess) -> None:
    for path in ("/", "/playground"):
        page = httpx.get(server.url + path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/playground/playground.js"' in page.text
    script = httpx.get(server.url + "/playground/playground.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/events" in script.text
    assert httpx.get(server.url + "/playground/playground.css").status_code == 200
    missing = httpx.get(server.url + "/playground/secrets.txt")
    assert (missing.status_code, missing.json()) == (404, {"message": "Not Found"})
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and "/playground" not in paths


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return path


@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def test_generate_with_a_reference_in_the_browser(
    browser_page: Any, server: ServerProcess, output_dir: Path, tmp_path: Path
) -> None:
    page = browser_page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    reference = tmp_path / "reference.png"
    reference.write_bytes(image_bytes("PNG", size=(96, 96), color=(240, 140, 20)))

    page.goto(server.url + "/")
    page.fill("#key", KEY_A)
    page.press("#key", "Tab")
    page.fill("#prompt", "A lighthouse on a cliff in a storm, in the colours of the reference")
    page.set_input_files("#refs-input", str(reference))
    page.wait_for_selector("#ref-thumbs img")
    page.select_option("#aspect", "16:9")
    page.click("#generate")

    page.wait_for_function(IMAGE_SHOWN)
    image = page.locator("#result img").first
    assert image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [1344, 768]
    assert page.get_attribute("#status", "data-status") == "COMPLETED"
    assert page.locator("#error").is_hidden()
    # The status came from the event stream, read with fetch (the key is a header).
    assert any(url.endswith("/events") for url in requested)
    src = image.get_attribute("src")
    page.wait_for_selector(f'#gallery img[src="{src}"]')
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].every((img) => img.complete)"
    )
    page.screenshot(path=str(output_dir / "playground.png"), full_page=True)

    # The key is remembered by the browser.
    page.reload()
    assert page.input_value("#key") == KEY_A


def test_errors_show_the_servers_message(
    browser_page: Any, server: ServerProcess, output_dir: Path
) -> None:
    page = browser_page
    page.goto(server.url + "/playground")
    page.fill("#key", KEY_A)
    page.fill("#prompt", "   ")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "Your request parameters didn't validate." in page.inner_text("#error")
    assert "prompt: must not be empty" in page.inner_text("#error")
    page.screenshot(path=str(output_dir / "playground-error.png"))

    page.fill("#key", "ig_wrong")
    page.fill("#prompt", "a cat")
    page.click("#generate")
    page.wait_for_function(
        "() => document.querySelector('#error').innerText.includes('Invalid API key')"
    )
