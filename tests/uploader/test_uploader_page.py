"""The /uploader page in headless Chromium against the real service (a uvicorn process)
and a real S3 server: the page loads, the Dashboard renders, a real audio file chosen
through the Dashboard's file input is listed and, through the tus endpoint, stored with
the same SHA-256; a connection cut mid-upload (a proxy) is resumed by Uppy, as is an
upload paused on the Dashboard; a file that is not audio gets the service's refusal.

Chromium's network is the loopback only; the proxy (tests/tcp_proxy.py) stands for the
phone's network, and Chromium's own throttling (DevTools protocol) slows an upload down
where a test must act mid-way."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, expect

from app.dev.keys import KeyPair
from app.settings import Settings
from tests.audio_factory import make_audio, make_png
from tests.service_process import ServiceProcess, settings_env
from tests.tcp_proxy import CuttableProxy
from tests.uploader.browser import headless_chromium

pytestmark = [
    pytest.mark.slow,
    # The browser is what is under test here; one database is enough.
    pytest.mark.parametrize("database", ["sqlite"], indirect=True),
]

UI_TIMEOUT_MS = 30_000
UPLOAD_TIMEOUT_MS = 120_000


@pytest.fixture
def service(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[ServiceProcess]:
    settings = settings_factory(uploader_page=True, log_level="WARNING")
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
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


@pytest.fixture
async def proxy(service: ServiceProcess) -> AsyncIterator[CuttableProxy]:
    front = await CuttableProxy(
        "127.0.0.1", service.port, watch=(b"PATCH /files/", b"HEAD /files/")
    ).start()
    yield front
    await front.stop()


async def upload_through_page(page: Page, audio: Path, *, started: bool = False) -> tuple[str, str]:
    """Chooses `audio` on the Dashboard, starts the upload and waits for the stored
    object's line; returns the upload id and the URL the page shows."""
    if not started:
        await start_upload(page, audio)
    stored = page.locator('#results li[data-state="completed"]')
    await expect(stored).to_have_count(1, timeout=UPLOAD_TIMEOUT_MS)
    upload_id = await stored.get_attribute("data-upload-id")
    url = await stored.locator("a.object-url").get_attribute("href")
    assert upload_id and url
    return upload_id, url


async def start_upload(page: Page, audio: Path) -> None:
    await page.locator("input.uppy-Dashboard-input").first.set_input_files(str(audio))
    await page.locator(".uppy-StatusBar-actionBtn--upload").click()


async def uploaded_bytes(page: Page) -> int:
    """What Uppy reports as sent for the page's one file."""
    sent = await page.evaluate(
        "() => Object.values(window.uppy.getState().files)[0].progress.bytesUploaded || 0"
    )
    return int(sent)


async def stored_object(service_url: str, token: str, upload_id: str, s3: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=service_url) as http:
        status = await http.get(
            f"/upload/{upload_id}", headers={"Authorization": f"Bearer {token}"}
        )
    assert status.status_code == 200, status.text
    data: dict[str, Any] = status.json()["data"]
    result = data["result"]
    body = s3.get_object(Bucket=result["bucket"], Key=result["key"])["Body"].read()
    return {**data, "object_sha256": hashlib.sha256(body).hexdigest()}


async def test_a_file_chosen_on_the_page_reaches_s3_with_the_same_sha256(
    service: ServiceProcess, browser: BrowserContext, keypair: KeyPair, s3: Any, tmp_path: Path
) -> None:
    token = keypair.token("browser-user")
    audio = make_audio("wav", tmp_path / "voice note.wav", seconds=3)
    page, problems = await open_page(browser, service.url, fragment=f"#token={token}&file_id=42")

    upload_id, url = await upload_through_page(page, audio)

    stored = await stored_object(service.url, token, upload_id, s3)
    expected = hashlib.sha256(audio.read_bytes()).hexdigest()
    assert stored["object_sha256"] == expected
    assert stored["result"]["sha256"] == expected
    assert await page.locator("#results code.sha256").inner_text() == expected
    assert url == stored["result"]["file_path_on_upload_service"]
    assert stored["main_service_file_id"] == 42
    assert stored["original_file_name"] == "voice note.wav"
    assert stored["result"]["content_type"] == "audio/wav"
    assert problems == []


async def test_an_upload_cut_off_mid_way_is_resumed_by_uppy(
    service: ServiceProcess,
    proxy: CuttableProxy,
    browser: BrowserContext,
    keypair: KeyPair,
    s3: Any,
    tmp_path: Path,
) -> None:
    token = keypair.token("browser-user")
    audio = make_audio("wav", tmp_path / "long.wav", seconds=40, channels=2)  # ~7 MB
    size = audio.stat().st_size
    page, _problems = await open_page(browser, proxy.url, fragment=f"#token={token}")

    # Every connection drops once ~40% of the file has gone up; the proxy then refuses
    # connections until it is restored, as a phone that lost its network would.
    proxy.cut_after_upstream_bytes = proxy.upstream_bytes + int(size * 0.4)
    upload = asyncio.ensure_future(upload_through_page(page, audio))
    deadline = time.monotonic() + UPLOAD_TIMEOUT_MS / 1000
    while proxy.online and not upload.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not proxy.online, "the upload finished before the proxy cut it off"
    cut_at = proxy.upstream_bytes
    proxy.cut_after_upstream_bytes = None
    # The network stays down until two connections were refused: Chromium's own silent
    # retry of the request, then Uppy's first retry. Restored at once, Chromium's retry
    # would re-send the whole PATCH from offset 0 (and get 409), which is the browser's
    # doing, not Uppy's resume.
    refused_before = proxy.connections
    while proxy.connections < refused_before + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    proxy.restore()

    upload_id, _url = await upload

    stored = await stored_object(service.url, token, upload_id, s3)
    assert stored["object_sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    # Uppy asked where to go on (HEAD) and sent a second PATCH with the rest only:
    # starting again would have sent the whole file after the ~40% already sent.
    assert proxy.seen[b"HEAD /files/"] >= 1
    assert proxy.seen[b"PATCH /files/"] >= 2
    assert cut_at < size
    assert proxy.upstream_bytes < size * 1.25, (proxy.upstream_bytes, size)


async def test_an_upload_paused_on_the_page_resumes_where_it_stopped(
    service: ServiceProcess,
    proxy: CuttableProxy,
    browser: BrowserContext,
    keypair: KeyPair,
    s3: Any,
    tmp_path: Path,
) -> None:
    token = keypair.token("browser-user")
    audio = make_audio("wav", tmp_path / "interview.wav", seconds=30)  # ~2.6 MB
    size = audio.stat().st_size
    page, problems = await open_page(browser, proxy.url, fragment=f"#token={token}")
    # Chromium's own throttling (DevTools protocol) slows the upload to ~1 MB/s, so there
    # is time to press Pause mid-way.
    devtools = await browser.new_cdp_session(page)
    await devtools.send("Network.enable")
    await devtools.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1_000_000},
    )

    await start_upload(page, audio)
    deadline = time.monotonic() + UPLOAD_TIMEOUT_MS / 1000
    while await uploaded_bytes(page) < size // 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    toggle = page.locator('[data-cy="togglePauseResume"]')
    await toggle.click()

    await expect(toggle).to_have_attribute("title", "Resume")
    await expect(page.locator(".uppy-StatusBar")).to_contain_text("Paused")
    paused_at = await uploaded_bytes(page)
    assert 0 < paused_at < size
    patches_before_resume = proxy.seen[b"PATCH /files/"]

    await devtools.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    await toggle.click()
    upload_id, _url = await upload_through_page(page, audio, started=True)

    stored = await stored_object(service.url, token, upload_id, s3)
    assert stored["object_sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    # Resuming asked for the offset and sent the rest in a new PATCH, not the whole file.
    assert proxy.seen[b"HEAD /files/"] >= 1
    assert proxy.seen[b"PATCH /files/"] > patches_before_resume
    assert proxy.upstream_bytes < size * 1.25, (proxy.upstream_bytes, size)
    assert problems == []


async def test_a_file_that_is_not_audio_is_refused_with_the_services_message(
    service: ServiceProcess,
    browser: BrowserContext,
    keypair: KeyPair,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    token = keypair.token("browser-user")
    image = tmp_path / "cover.mp3"
    image.write_bytes(make_png(tmp_path / "cover.png").read_bytes())
    page, _problems = await open_page(browser, service.url, fragment=f"#token={token}")

    await start_upload(page, image)

    # The final PATCH gets the core's 415; the page shows the service's own sentence.
    await expect(page.locator("#notice")).to_contain_text(
        "unsupported_audio, HTTP 415", timeout=UPLOAD_TIMEOUT_MS
    )
    await expect(page.locator("#results li")).to_have_count(0)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
