"""IETF "Resumable Uploads for HTTP", interop versions 6 and 8, spoken over raw sockets
to a real service process with a real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from tests.tus.conftest import TusService
from tests.tus.raw_http import RawResponse, request

pytestmark = pytest.mark.slow
VERSIONS = ["6", "8"]


def _headers(service: TusService, version: str, sub: str = "user-1") -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": version, **service.auth(sub)}


def _append_type(version: str) -> dict[str, str]:
    return {"Content-Type": "application/partial-upload"} if version == "8" else {}


async def _create(service: TusService, version: str, name: str, sub: str = "user-1") -> str:
    created = await request(
        "POST",
        f"{service.endpoint}?main_service_file_id=31",
        {
            **_headers(service, version, sub),
            "Upload-Complete": "?0",
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )
    assert created is not None and created.status == 201, created
    assert created.headers["upload-offset"] == "0"
    assert created.headers["upload-complete"] == "?0"
    assert _limits(created)["max-size"] == service.settings.max_file_size
    return created.headers["location"]


def _limits(answer: RawResponse) -> dict[str, int]:
    """`Upload-Limit`, a structured-field dictionary of integers."""
    pairs = (item.strip().split("=") for item in answer.headers["upload-limit"].split(","))
    return {key: int(value) for key, value in pairs}


async def _head(service: TusService, version: str, url: str, sub: str = "user-1") -> RawResponse:
    head = await request("HEAD", url, _headers(service, version, sub))
    assert head is not None
    return head


async def _patch(
    service: TusService, version: str, url: str, offset: int, body: bytes, *, complete: bool
) -> RawResponse:
    patched = await request(
        "PATCH",
        url,
        {
            **_headers(service, version),
            **_append_type(version),
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if complete else "?0",
        },
        body,
    )
    assert patched is not None
    return patched


@pytest.mark.parametrize("version", VERSIONS)
async def test_upload_in_two_appends_reaches_s3_intact(
    tus_service: TusService, recording: Path, version: str
) -> None:
    data = recording.read_bytes()
    url = await _create(tus_service, version, "interview.wav")
    half = len(data) // 2
    first = await _patch(tus_service, version, url, 0, data[:half], complete=False)
    assert first.status == 204 and first.headers["upload-offset"] == str(half)
    head = await _head(tus_service, version, url)
    assert head.status == 204
    assert head.headers["upload-offset"] == str(half)
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["cache-control"] == "no-store"

    last = await _patch(tus_service, version, url, half, data[half:], complete=True)
    assert last.status == 200, last.body
    assert last.headers["upload-complete"] == "?1"
    result = last.json()["data"]
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    stored = tus_service.stored(result["key"])
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    done = await _head(tus_service, version, url)
    assert done.headers["upload-complete"] == "?1"
    assert done.headers["upload-length"] == done.headers["upload-offset"] == str(len(data))
    assert "expires" not in _limits(done)  # a completed upload no longer expires


@pytest.mark.parametrize("version", VERSIONS)
async def test_creation_with_the_whole_file_completes_at_once(
    tus_service: TusService, recording: Path, version: str
) -> None:
    data = recording.read_bytes()
    created = await request(
        "POST",
        f"{tus_service.endpoint}?main_service_file_id=32&filename=whole.wav",
        {**_headers(tus_service, version), "Upload-Complete": "?1"},
        data,
    )
    assert created is not None and created.status == 200, created
    assert created.headers["location"].startswith(tus_service.endpoint)
    assert created.json()["data"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_cut_append_keeps_its_bytes_and_the_resume_sends_only_the_rest(
    tus_service: TusService, recording: Path, version: str
) -> None:
    data = recording.read_bytes()
    url = await _create(tus_service, version, "interview.wav")
    sent = len(data) * 2 // 3
    cut = await request(
        "PATCH",
        url,
        {
            **_headers(tus_service, version),
            **_append_type(version),
            "Upload-Offset": "0",
            "Upload-Complete": "?1",
        },
        data,
        send_only=sent,
    )
    assert cut is None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    offset = 0
    while loop.time() < deadline:
        offset = int((await _head(tus_service, version, url)).headers["upload-offset"])
        if offset == sent:
            break
        await asyncio.sleep(0.1)
    assert offset == sent  # every byte that arrived was kept

    # (A short body: the 409 comes before the body is read, and the connection closes.)
    stale = await _patch(tus_service, version, url, 0, data[:10], complete=False)
    assert stale.status == 409
    assert stale.headers["upload-offset"] == str(sent)
    assert stale.json()["expected-offset"] == sent

    rest = await _patch(tus_service, version, url, offset, data[offset:], complete=True)
    assert rest.status == 200, rest.body
    assert rest.json()["data"]["size"] == len(data)
    stored = tus_service.stored(rest.json()["data"]["key"])
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("version", VERSIONS)
async def test_another_users_token_gets_404(tus_service: TusService, version: str) -> None:
    url = await _create(tus_service, version, "memo.mp3", sub="owner")
    assert (await _head(tus_service, version, url, sub="stranger")).status == 404
    patched = await request(
        "PATCH",
        url,
        {
            **_headers(tus_service, version, "stranger"),
            **_append_type(version),
            "Upload-Offset": "0",
            "Upload-Complete": "?0",
        },
        b"abc",
    )
    assert patched is not None and patched.status == 404
    deleted = await request("DELETE", url, _headers(tus_service, version, "stranger"))
    assert deleted is not None and deleted.status == 404
    assert (await _head(tus_service, version, url, sub="owner")).status == 204


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_png_named_mp3_is_refused_on_the_final_append(
    tus_service: TusService, png_as_mp3: Path, version: str
) -> None:
    url = await _create(tus_service, version, "cover.mp3")
    refused = await _patch(tus_service, version, url, 0, png_as_mp3.read_bytes(), complete=True)
    assert refused.status == 415
    assert refused.json()["error"]["code"] == "unsupported_audio"
    assert tus_service.stored_keys() == []


async def test_interop_8_wants_partial_upload_appends_and_cancellation_works(
    tus_service: TusService,
) -> None:
    url = await _create(tus_service, "8", "memo.wav")
    wrong_type = await request(
        "PATCH",
        url,
        {
            **_headers(tus_service, "8"),
            "Content-Type": "application/octet-stream",
            "Upload-Offset": "0",
            "Upload-Complete": "?0",
        },
        b"abc",
    )
    assert wrong_type is not None and wrong_type.status == 415
    cancelled = await request("DELETE", url, _headers(tus_service, "8"))
    assert cancelled is not None and cancelled.status == 204
    assert (await _head(tus_service, "8", url)).status == 404
    unknown = await request(
        "POST", tus_service.endpoint, {**_headers(tus_service, "99"), "Upload-Complete": "?0"}
    )
    assert unknown is not None and unknown.status == 412


@pytest.mark.parametrize("version", VERSIONS)
async def test_upload_limit_states_the_size_cap_and_the_remaining_lifetime(
    tus_service: TusService, version: str
) -> None:
    settings = tus_service.settings
    ttl = settings.session_ttl_seconds
    created = await request(
        "POST",
        f"{tus_service.endpoint}?main_service_file_id=33&filename=memo.wav",
        {**_headers(tus_service, version), "Upload-Complete": "?0"},
    )
    assert created is not None and created.status == 201
    # Only what holds: no append size caps (a PATCH may carry the whole file), min-size 0.
    limits = _limits(created)
    assert set(limits) == {"max-size", "expires"}
    assert limits["max-size"] == settings.max_file_size
    assert ttl - 30 <= limits["expires"] <= ttl

    head = await _head(tus_service, version, created.headers["location"])
    assert head.status == 204
    assert set(_limits(head)) == {"max-size", "expires"}
    assert ttl - 30 <= _limits(head)["expires"] <= limits["expires"]

    appended = await _patch(
        tus_service, version, created.headers["location"], 0, b"RIFF", complete=False
    )
    assert appended.status == 204
    assert ttl - 30 <= _limits(appended)["expires"] <= ttl

    # OPTIONS is about no upload in particular: the size cap only.
    options = await request("OPTIONS", tus_service.endpoint, _headers(tus_service, version))
    assert options is not None and options.status == 204
    assert _limits(options) == {"max-size": settings.max_file_size}


@pytest.mark.parametrize("version", VERSIONS)
async def test_incomplete_appends_a_dropped_one_head_and_the_final_append(
    tus_service: TusService, recording: Path, version: str
) -> None:
    """The URLSession pattern by hand: appends with `Upload-Complete: ?0`, one of them cut
    by a lost connection, HEAD for the offset, and the rest in a final `?1` append."""
    data = recording.read_bytes()
    url = await _create(tus_service, version, "interview.wav")
    third = len(data) // 3
    first = await _patch(tus_service, version, url, 0, data[:third], complete=False)
    assert first.status == 204 and first.headers["upload-offset"] == str(third)
    assert first.headers["upload-complete"] == "?0"

    # The second append declares two thirds but the connection drops after half of it.
    sent = third // 2
    cut = await request(
        "PATCH",
        url,
        {
            **_headers(tus_service, version),
            **_append_type(version),
            "Upload-Offset": str(third),
            "Upload-Complete": "?0",
        },
        data[third : 2 * third],
        send_only=sent,
    )
    assert cut is None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    offset = third
    while loop.time() < deadline:
        head = await _head(tus_service, version, url)
        offset = int(head.headers["upload-offset"])
        if offset == third + sent:
            break
        await asyncio.sleep(0.1)
    assert offset == third + sent  # the bytes that arrived before the drop are kept
    assert head.headers["upload-complete"] == "?0"
    assert "upload-length" not in head.headers  # never declared: the final append says it

    rest = await _patch(tus_service, version, url, offset, data[offset:], complete=True)
    assert rest.status == 200, rest.body
    assert rest.headers["upload-complete"] == "?1"
    assert rest.json()["data"]["size"] == len(data)
    stored = tus_service.stored(rest.json()["data"]["key"])
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
