"""Debian's Chromium, headless, driven by Playwright (the Python package, which never
downloads a browser of its own here: it is pointed at /usr/bin/chromium).

Chromium starts with a fresh profile in a temporary folder and without its background
services, whose connections this machine's closed network refuses. A Chromium that
cannot start makes the test skip with the reason, as a missing bundle does."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright
from playwright.async_api import Error as PlaywrightError

from app.uploader.page import bundle_built

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAUNCH_TIMEOUT_MS = 60_000


def skip_unless_page_can_run() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/bootstrap --system installs it)")
    if not bundle_built():
        pytest.skip("the uploader bundle is not built (scripts/bootstrap builds it with npm)")


@asynccontextmanager
async def headless_chromium(profile_dir: Path) -> AsyncIterator[BrowserContext]:
    """A browser context in a fresh profile; skips the test if Chromium cannot start."""
    skip_unless_page_can_run()
    profile_dir.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        try:
            context = await playwright.chromium.launch_persistent_context(
                str(profile_dir),
                executable_path=CHROMIUM,
                headless=True,
                args=list(CHROMIUM_FLAGS),
                timeout=LAUNCH_TIMEOUT_MS,
            )
        except PlaywrightError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "?"
            pytest.skip(f"Chromium cannot start here: {first_line}")
        try:
            yield context
        finally:
            await context.close()
