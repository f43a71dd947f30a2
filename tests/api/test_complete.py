"""POST /upload/complete: assembly into S3, idempotency, races, and failures."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from app.main import create_app
from app.settings import Settings
from app.uploads.naming import owner_segment
from tests.conftest import running
from tests.support import UploadApi, assert_error, sha256, split
from tests.tcp_proxy import CuttableProxy

MiB = 1024 * 1024


def objects_in(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def session_dirs(settings: Settings) -> list[Path]:
    root = settings.local_temp_chunk_path / "sessions"
    return [p for p in root.iterdir() if any(p.iterdir())] if root.exists() else []


async def test_complete_returns_the_seed_body_and_stores_the_object(
    api: UploadApi,
    audio_wav: bytes,
    s3: Any,
    settings: Settings,
) -> None:
    response = await api.upload(audio_wav, chunk_size=100_000, file_id=42, name="voice.wav")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    # No MAIN_SERVICE_NOTIFY_URL here: the message claims no notification.
    assert body["message"] == "File upload completed."
    data = body["data"]
    assert data["bucket"] == settings.s3_bucket_name
    assert data["size"] == len(audio_wav)
    assert data["sha256"] == sha256(audio_wav)
    assert data["content_type"].startswith("audio/")
    assert data["key"].startswith(f"uploads/{owner_segment('user-1')}/42/")
    assert data["key"].endswith("/voice.wav")
    assert data["file_path_on_upload_service"] == (
        f"{settings.s3_endpoint_url}/{settings.s3_bucket_name}/{data['key']}"
    )
    stored = s3.get_object(Bucket=settings.s3_bucket_name, Key=data["key"])
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == sha256(audio_wav)
    assert stored["ContentType"] == data["content_type"]
    assert session_dirs(settings) == []


async def test_large_file_in_many_parts(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, tmp_path: Path
) -> None:
    # ~13 MB of real audio, 5 MiB parts: three multipart parts, the last one short.
    wav = tmp_path / "long.wav"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(wav), "synth", "75", "pinknoise"],
        check=True,
    )
    data = wav.read_bytes()
    # The slow path's own part splitting: with eager flush the final metadata copy gives
    # the object a plain ETag (tests/uploads/test_eager_flush.py covers that path).
    settings = settings_factory(s3_part_size_bytes=5 * MiB, s3_max_concurrency=2, eager_flush=False)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        response = await api.upload(data, chunk_size=MiB + 123, parallel=4, shuffle=True)
        assert response.status_code == 200, response.text
        key = response.json()["data"]["key"]
    head = s3.head_object(Bucket=settings.s3_bucket_name, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    stored = s3.get_object(Bucket=settings.s3_bucket_name, Key=key)["Body"].read()
    assert sha256(stored) == sha256(data)


async def test_missing_chunks_are_409_with_the_indexes(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    chunks = split(audio_wav, 100_000)
    for index in (0, 2, 4):
        assert (await api.chunk(session_id, index, chunks[index])).status_code == 200
    body = assert_error(await api.complete(session_id, 6), 409, "chunks_incomplete")
    assert body["error"]["details"]["missing"] == [1, 3, 5]


async def test_chunks_beyond_total_are_409(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    for index in range(3):
        assert (await api.chunk(session_id, index, audio_wav[:1000])).status_code == 200
    body = assert_error(await api.complete(session_id, 2), 409, "chunks_incomplete")
    assert body["error"]["details"]["unexpected"] == [2]


async def test_file_id_must_match_init(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session(file_id=42)
    assert (await api.chunk(session_id, 0, audio_wav)).status_code == 200
    assert_error(await api.complete(session_id, 1, file_id=43), 409, "file_id_mismatch")


async def test_declared_size_and_sha256_must_match(
    api: UploadApi, audio_wav: bytes, s3: Any, settings: Settings
) -> None:
    session_id = await api.session(total_size=len(audio_wav) + 1)
    assert (await api.chunk(session_id, 0, audio_wav)).status_code == 200
    assert_error(await api.complete(session_id, 1), 422, "size_mismatch")

    wrong = hashlib.sha256(b"other").hexdigest()
    session_id = await api.session(sha256=wrong)
    assert (await api.chunk(session_id, 0, audio_wav)).status_code == 200
    assert_error(await api.complete(session_id, 1), 422, "checksum_mismatch")
    assert objects_in(s3, settings.s3_bucket_name) == []
    # Nothing was lost: the session is still completable, and a right checksum at
    # complete... still conflicts with the one declared at init.
    status = (await api.status(session_id)).json()["data"]
    assert status["state"] == "uploading"
    assert status["received_chunks"] == [0]

    session_id = await api.session()
    assert (await api.chunk(session_id, 0, audio_wav)).status_code == 200
    assert_error(await api.complete(session_id, 1, sha256=wrong), 422, "checksum_mismatch")
    assert objects_in(s3, settings.s3_bucket_name) == []
    ok = await api.complete(session_id, 1, sha256=sha256(audio_wav))
    assert ok.status_code == 200, ok.text


async def test_repeated_complete_returns_the_same_body(
    api: UploadApi, audio_wav: bytes, s3: Any, settings: Settings
) -> None:
    session_id = await api.session()
    await api.send_all(session_id, split(audio_wav, 200_000))
    first = await api.complete(session_id, 3)
    second = await api.complete(session_id, 3)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(objects_in(s3, settings.s3_bucket_name)) == 1


async def test_concurrent_completes_make_exactly_one_object(
    api: UploadApi,
    audio_wav: bytes,
    s3: Any,
    settings: Settings,
) -> None:
    session_id = await api.session()
    await api.send_all(session_id, split(audio_wav, 100_000))
    responses = await asyncio.gather(*(api.complete(session_id, 6) for _ in range(5)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and set(codes) <= {200, 409}, codes
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "completion_in_progress")
    bodies = {r.text for r in responses if r.status_code == 200}
    assert len(bodies) == 1
    listed = objects_in(s3, settings.s3_bucket_name)
    assert len(listed) == 1
    uploads = s3.list_multipart_uploads(Bucket=settings.s3_bucket_name).get("Uploads", [])
    assert uploads == []


async def test_s3_outage_is_503_then_success_nothing_lost(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3_server: LocalS3Server,
    s3: Any,
    audio_wav: bytes,
) -> None:
    proxy = await CuttableProxy("127.0.0.1", s3_server.port).start()
    settings = settings_factory(s3_endpoint_url=proxy.url, s3_timeout_seconds=2)
    try:
        async with running(create_app(settings)) as http:
            api = UploadApi(http, keypair)
            session_id = await api.session()
            chunks = split(audio_wav, 100_000)
            await api.send_all(session_id, chunks)
            proxy.cut()
            assert_error(await api.complete(session_id, len(chunks)), 503, "storage_unavailable")
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"]["checks"]["s3"] == "unavailable"
            status = (await api.status(session_id)).json()["data"]
            assert status["state"] == "uploading"
            assert status["received_chunks"] == list(range(len(chunks)))
            proxy.restore()
            response = await api.complete(session_id, len(chunks))
            assert response.status_code == 200, response.text
            key = response.json()["data"]["key"]
    finally:
        await proxy.stop()
    stored = s3.get_object(Bucket=settings.s3_bucket_name, Key=key)["Body"].read()
    assert sha256(stored) == sha256(audio_wav)


async def test_restart_between_chunks_loses_nothing(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
    s3: Any,
) -> None:
    settings = settings_factory()
    chunks = split(audio_wav, 100_000)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        for index in range(0, len(chunks), 2):
            assert (await api.chunk(session_id, index, chunks[index])).status_code == 200
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        status = (await api.status(session_id)).json()["data"]
        assert status["received_chunks"] == list(range(0, len(chunks), 2))
        for index in range(1, len(chunks), 2):
            assert (await api.chunk(session_id, index, chunks[index])).status_code == 200
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
    stored = s3.get_object(Bucket=settings.s3_bucket_name, Key=response.json()["data"]["key"])[
        "Body"
    ].read()
    assert stored == audio_wav


async def test_hostile_file_names_stay_inside_the_prefix(
    api: UploadApi,
    audio_wav: bytes,
    settings: Settings,
) -> None:
    names = [
        "../../../etc/passwd.wav",
        "/abs/path.wav",
        "..\\..\\win.wav",
        "ünïcødé 🎵.wav",
        "....wav",
        " .wav",
    ]
    keys = set()
    for name in names:
        response = await api.upload(audio_wav[:50_000], chunk_size=50_000, name=name)
        assert response.status_code == 200, (name, response.text)
        key = response.json()["data"]["key"]
        keys.add(key)
        parts = key.split("/")
        assert parts[:3] == ["uploads", owner_segment("user-1"), "42"]
        assert len(parts) == 5
        assert ".." not in parts
        assert "" not in parts
        assert all(c.isprintable() and c not in "\\" for c in key), key
        assert not key.startswith("/")
    assert len(keys) == len(names)
    # Control characters never get this far: init refuses them (tests/api/test_hostile_edge.py).
    assert (await api.init(name="tab\tand\nnewline\x1b.wav")).status_code == 422


async def test_complete_of_other_users_session_is_404(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    assert (await api.chunk(session_id, 0, audio_wav)).status_code == 200
    assert_error(await api.complete(session_id, 1, sub="intruder"), 404, "session_not_found")
    assert_error(
        await api.complete("6f1c9d8e-7a55-4c1e-9f4e-0d2b1a3c5e7f", 1), 404, "session_not_found"
    )


async def test_a_completion_that_lost_its_lease_keeps_the_chunks(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3_server: LocalS3Server,
    s3: Any,
    audio_wav: bytes,
) -> None:
    """If the session was taken away mid-completion (lease lapsed, janitor released it),
    the late completion must not commit nor delete the chunks: a retry finishes."""
    from datetime import UTC, datetime, timedelta

    from tests.processes import HoldingProxy, wait_until

    proxy = HoldingProxy(s3_server.endpoint_url, b"partNumber=")
    settings = settings_factory(s3_endpoint_url=proxy.url)
    try:
        async with running(create_app(settings)) as http:
            api = UploadApi(http, keypair)
            container = http._transport.app.state.container  # type: ignore[attr-defined]
            session_id = await api.session()
            chunks = split(audio_wav, 100_000)
            await api.send_all(session_id, chunks)
            late = asyncio.create_task(api.complete(session_id, len(chunks)))
            await asyncio.to_thread(
                wait_until,
                lambda: proxy.held >= 1,
                timeout_seconds=30,
                what="the part upload to be held",
            )
            later = datetime.now(UTC) + timedelta(days=1)
            taken = await container.store.release_stale_completion(
                session_id, now=later, lease_lapsed_before=later
            )
            assert taken is not None
            proxy.release.set()
            assert_error(await late, 409, "completion_in_progress")
            # The late attempt's lease was taken with the session: it committed nothing.
            bucket = settings.s3_bucket_name
            assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
            assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            status = (await api.status(session_id)).json()["data"]
            assert status["state"] == "uploading"
            assert status["received_chunks"] == list(range(len(chunks)))
            retried = await api.complete(session_id, len(chunks))
            assert retried.status_code == 200, retried.text
            key = retried.json()["data"]["key"]
    finally:
        proxy.stop()
    assert s3.get_object(Bucket=settings.s3_bucket_name, Key=key)["Body"].read() == audio_wav


@pytest.mark.parametrize(("sign_payload", "signed"), [("auto", True), ("never", False)])
async def test_part_bodies_are_signed_over_http_unless_told_not_to(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3_server: LocalS3Server,
    s3: Any,
    bucket: str,
    audio_wav: bytes,
    sign_payload: str,
    signed: bool,
) -> None:
    # Seen on the wire between the service and S3 (plain http here).
    proxy = await CuttableProxy(
        "127.0.0.1", s3_server.port, watch=[b"partNumber=", b"UNSIGNED-PAYLOAD"]
    ).start()
    settings = settings_factory(s3_endpoint_url=proxy.url, s3_sign_payload=sign_payload)
    try:
        async with running(create_app(settings)) as http:
            api = UploadApi(http, keypair)
            session_id = await api.session()
            chunks = split(audio_wav, 100_000)
            await api.send_all(session_id, chunks)
            response = await api.complete(session_id, len(chunks))
            assert response.status_code == 200, response.text
    finally:
        await proxy.stop()

    parts_sent = proxy.seen[b"partNumber="]
    assert parts_sent >= 1
    # Unsigned, every request says so (the parts and the calls around them).
    if signed:
        assert proxy.seen[b"UNSIGNED-PAYLOAD"] == 0
    else:
        assert proxy.seen[b"UNSIGNED-PAYLOAD"] >= parts_sent
    key = response.json()["data"]["file_path_on_upload_service"].split(f"/{bucket}/", 1)[1]
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert sha256(stored) == sha256(audio_wav)
