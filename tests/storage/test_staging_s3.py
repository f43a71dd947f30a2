"""S3 staging (`STAGING_BACKEND=s3`) against a real S3 server over HTTP: one staged object
per chunk index however it is re-sent, nothing staged after abort, completion or the
janitor, and reads at completion that fetch only what they need."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from app.janitor import run_pass
from app.main import create_app
from app.settings import Settings
from app.storage.staging_s3 import S3Staging
from app.uploads.models import StoredChunk, utc_now
from tests.conftest import running
from tests.processes import make_wav
from tests.support import UploadApi, assert_error, sha256, split

MiB = 1024 * 1024


@pytest.fixture
def staging_bucket(s3_server: LocalS3Server, bucket: str) -> str:
    name = f"{bucket}-staging"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def s3_settings(
    settings_factory: Callable[..., Settings], staging_bucket: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {"staging_backend": "s3", "s3_staging_bucket": staging_bucket, **overrides}
        return settings_factory(**values)

    return make


@pytest.fixture
async def app_and_api(
    s3_settings: Callable[..., Settings], keypair: KeyPair
) -> AsyncIterator[tuple[Any, UploadApi]]:
    app = create_app(s3_settings(max_chunk_size=1 * MiB, max_file_size=3 * MiB))
    async with running(app) as http:
        yield app, UploadApi(http, keypair)


def staged(s3: Any, bucket: str, session_id: str | None = None) -> dict[str, bytes]:
    prefix = f"staging/{session_id}/" if session_id else "staging/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed
    }


async def test_resent_and_parallel_chunks_leave_one_object_per_index(
    app_and_api: tuple[Any, UploadApi], s3: Any, staging_bucket: str, audio_wav: bytes
) -> None:
    _, api = app_and_api
    session_id = await api.session()
    assert (await api.chunk(session_id, 0, audio_wav[:1000])).status_code == 200
    assert (await api.chunk(session_id, 0, audio_wav[1000:2500])).status_code == 200
    assert list(staged(s3, staging_bucket, session_id).values()) == [audio_wav[1000:2500]]

    versions = [audio_wav[i * 1000 : (i + 1) * 1000 + i] for i in range(6)]
    answers = await asyncio.gather(*(api.chunk(session_id, 1, v) for v in versions))
    assert all(answer.status_code == 200 for answer in answers)
    objects = staged(s3, staging_bucket, session_id)
    assert len(objects) == 2
    status = (await api.status(session_id)).json()["data"]
    assert status["received_bytes"] == sum(len(body) for body in objects.values())
    assert any(body in versions for body in objects.values())


async def test_over_the_file_limit_is_413_and_abort_leaves_nothing_staged(
    app_and_api: tuple[Any, UploadApi], s3: Any, staging_bucket: str
) -> None:
    _, api = app_and_api
    session_id = await api.session()
    block = b"\x01" * MiB
    for index in range(3):
        assert (await api.chunk(session_id, index, block)).status_code == 200
    assert_error(await api.chunk(session_id, 3, block), 413, "file_too_large")
    assert len(staged(s3, staging_bucket, session_id)) == 3
    assert (await api.abort(session_id)).status_code == 200
    assert staged(s3, staging_bucket) == {}


async def test_the_janitor_removes_what_no_open_session_owns(
    s3_settings: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    staging_bucket: str,
    audio_wav: bytes,
) -> None:
    settings = s3_settings(session_ttl_seconds=3600, orphan_grace_seconds=60)
    app = create_app(settings)
    async with running(app) as http:
        api = UploadApi(http, keypair)
        container = app.state.container
        idle = await api.session()
        assert (await api.chunk(idle, 0, audio_wav[:1000])).status_code == 200
        live = await api.session(file_id=43)
        assert (await api.chunk(live, 0, audio_wav[:2000])).status_code == 200
        # What crashes leave: objects of a session no record knows, an object of a live
        # session that no chunk record names, a temp file of a chunk in flight.
        stray = f"staging/{uuid.uuid4()}/000000.dead.chunk"
        unrecorded = f"staging/{live}/000001.dead.chunk"
        for key in (stray, unrecorded):
            s3.put_object(Bucket=staging_bucket, Key=key, Body=b"x")
        (settings.local_temp_chunk_path / "incoming" / "crashed.part").write_bytes(b"x")

        report = await run_pass(container, now=utc_now() + timedelta(seconds=120))
        assert (report.removed_session_dirs, report.removed_chunk_files) == (1, 1)
        assert report.removed_incoming_files == 1
        left = staged(s3, staging_bucket)
        assert stray not in left and unrecorded not in left
        assert len(left) == 2  # the two sessions' recorded chunks

        # Past the TTL both sessions expire and their staged objects go.
        report = await run_pass(container, now=utc_now() + timedelta(seconds=7200))
        assert report.expired_sessions == 2
        assert staged(s3, staging_bucket) == {}


async def test_completion_reads_windows_not_whole_chunks_for_the_audio_check(
    s3_settings: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    staging_bucket: str,
    tmp_path: Any,
) -> None:
    wav = make_wav(tmp_path / "long.wav", 60)  # ~10.6 MB in 4 MiB chunks
    chunks = split(wav, 4 * MiB)
    app = create_app(s3_settings())
    async with running(app) as http:
        api = UploadApi(http, keypair)
        container = app.state.container
        staging = container.staging
        assert isinstance(staging, S3Staging)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        stored = await container.store.list_chunks(session_id)

        def head_and_tail(records: list[StoredChunk]) -> tuple[bytes, bytes, int]:
            with staging.open_assembled(session_id, records) as stream:
                head = stream.read(4096)
                stream.seek(-4096, 2)
                tail = stream.read()
                return head, tail, stream.raw.bytes_fetched  # type: ignore[attr-defined]

        head, tail, fetched = await asyncio.to_thread(head_and_tail, stored)
        assert (head, tail) == (wav[:4096], wav[-4096:])
        assert fetched <= 2 * MiB  # two windows, not the 10 MB of chunks
        done = await api.complete(session_id, len(chunks))
        assert done.status_code == 200, done.text
        assert done.json()["data"]["sha256"] == sha256(wav)
    assert staged(s3, staging_bucket) == {}


async def test_reads_on_the_event_loop_thread_are_refused(
    app_and_api: tuple[Any, UploadApi], audio_wav: bytes
) -> None:
    app, api = app_and_api
    session_id = await api.session()
    assert (await api.chunk(session_id, 0, audio_wav[:1000])).status_code == 200
    records = await app.state.container.store.list_chunks(session_id)
    stream = app.state.container.staging.open_assembled(session_id, records)
    with pytest.raises(RuntimeError, match="worker thread"):
        stream.read(10)
    stream.close()
