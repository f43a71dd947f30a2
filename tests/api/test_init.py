"""POST /upload/init."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from app.settings import Settings
from tests.support import UploadApi, assert_error


async def test_init_returns_the_seed_body(api: UploadApi, settings: Settings) -> None:
    response = await api.init(42, "voice note.m4a")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Upload session initialized."
    data = body["data"]
    assert uuid.UUID(data["upload_session_id"]).version == 4
    assert datetime.fromisoformat(data["expires_at"]).tzinfo is not None
    assert data["max_chunk_size"] == settings.max_chunk_size


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"main_service_file_id": 0, "original_file_name": "a.mp3"},
        {"main_service_file_id": -1, "original_file_name": "a.mp3"},
        {"main_service_file_id": "x", "original_file_name": "a.mp3"},
        {"main_service_file_id": 1, "original_file_name": ""},
        {"main_service_file_id": 1, "original_file_name": "a" * 252 + ".mp3"},
        {"main_service_file_id": 1},
        {"main_service_file_id": 1, "original_file_name": "a.mp3", "sha256": "xyz"},
        {"main_service_file_id": 1, "original_file_name": "a.mp3", "total_chunks": 0},
    ],
)
async def test_bad_body_is_422_in_the_envelope(api: UploadApi, body: dict[str, object]) -> None:
    response = await api.client.post("/upload/init", json=body, headers=api.headers())
    assert_error(response, 422, "validation_error")
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "name", ["notes.txt", "song.exe", "noextension", "mp3", "a.mp3.png", "bad\x00.mp3"]
)
async def test_disallowed_file_names_are_422(api: UploadApi, name: str) -> None:
    assert_error(await api.init(1, name), 422, "validation_error")


async def test_not_json_is_422(api: UploadApi) -> None:
    response = await api.client.post(
        "/upload/init",
        content=b"{not json",
        headers={**api.headers(), "content-type": "application/json"},
    )
    assert_error(response, 422, "validation_error")


async def test_total_size_over_limit_is_413(api: UploadApi, settings: Settings) -> None:
    response = await api.init(1, "a.mp3", total_size=settings.max_file_size + 1)
    assert_error(response, 413, "file_too_large")


async def test_chunk_size_over_limit_is_413(api: UploadApi, settings: Settings) -> None:
    response = await api.init(1, "a.mp3", chunk_size=settings.max_chunk_size + 1)
    assert_error(response, 413, "chunk_too_large")


async def test_total_chunks_over_limit_is_422(api: UploadApi, settings: Settings) -> None:
    assert_error(
        await api.init(1, "a.mp3", total_chunks=settings.max_chunks + 1), 422, "validation_error"
    )
