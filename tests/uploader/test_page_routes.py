"""The uploader page's routes without a browser: off by default, and the page's
settings block and its refusal to show a blank page when the bundle was never built."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from app.uploader import page as uploader_page
from tests.conftest import running

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


async def test_the_page_is_off_by_default(settings_factory: Callable[..., Settings]) -> None:
    async with running(create_app(settings_factory())) as http:
        page = await http.get("/uploader")
        script = await http.get("/uploader/assets/uploader.js")
    assert page.status_code == 404
    assert page.json()["error"]["code"] == "not_found"
    assert script.status_code == 404


async def test_the_page_carries_the_settings_its_script_needs(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bundle of its own, so this runs where npm never built the real one.
    bundle = tmp_path / "dist"
    bundle.mkdir()
    (bundle / "uploader.js").write_text("export {}")
    (bundle / "uploader.css").write_text("")
    monkeypatch.setattr(uploader_page, "BUNDLE_DIR", bundle)
    settings = settings_factory(
        uploader_page=True,
        allowed_audio_extensions="wav,mp3",
        max_file_size=123_456_789,
        tus_base_path="/resumable",
    )
    async with running(create_app(settings)) as http:
        response = await http.get("/uploader")
    match = re.search(
        r'<script id="uploader-config" type="application/json">(.*?)</script>', response.text
    )
    assert match is not None
    config = json.loads(match.group(1))
    assert config["allowed_extensions"] == ["mp3", "wav"]
    assert config["max_file_size"] == 123_456_789
    assert config["status_path"] == "/upload/"
    assert config["tus_endpoint"] == "/resumable/"


async def test_an_unbuilt_bundle_gives_a_page_that_says_how_to_build_it(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uploader_page, "BUNDLE_DIR", tmp_path / "never-built")
    async with running(create_app(settings_factory(uploader_page=True))) as http:
        page = await http.get("/uploader")
        script = await http.get("/uploader/assets/uploader.js")
    assert page.status_code == 503
    assert "scripts/bootstrap" in page.text
    assert script.status_code == 404
