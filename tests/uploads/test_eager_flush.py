"""Eager flush: parts reach S3 while chunks arrive, and the object is still exactly the
file, whatever order chunks come in, however often they are re-sent, across a crash."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from app.main import create_app
from app.settings import Settings
from app.uploads.eager import EagerResult
from app.uploads.models import StoredChunk
from app.uploads.service import UploadService
from tests.audio_factory import make_audio, missing_encoder
from tests.conftest import running
from tests.processes import ServiceProcess, service_env
from tests.support import UploadApi, assert_error, sha256, split

MiB = 1024 * 1024
PART_SIZE = 5 * MiB
CHUNK_SIZE = 3 * MiB + 4321  # never aligned with parts: parts span chunk boundaries


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About 23 MB of real audio: four full 5 MiB parts and a short tail."""
    path = tmp_path_factory.mktemp("eager") / "long.wav"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(path), "synth", "130", "pinknoise"],
        check=True,
    )
    return path.read_bytes()


async def until(check: Callable[[], Awaitable[bool]], timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.05)


def open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def parts_in_s3(s3: Any, bucket: str) -> int:
    uploads = open_uploads(s3, bucket)
    if not uploads:
        return 0
    upload = uploads[0]
    listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(listed.get("Parts", []))


def stored_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, UploadService]]:
    app = create_app(settings)
    async with running(app) as http:
        yield http, app.state.container.uploads


async def flushed_parts(s3: Any, bucket: str, count: int) -> None:
    async def enough() -> bool:
        return await asyncio.to_thread(parts_in_s3, s3, bucket) >= count

    await until(enough)


async def test_parts_reach_s3_before_complete_and_the_row_names_the_upload(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks[:-1])
        prefix_bytes = sum(len(c) for c in chunks[:-1])
        await flushed_parts(s3, bucket, prefix_bytes // PART_SIZE)
        [upload] = open_uploads(s3, bucket)
        row = await uploads.store.get(session_id)
        assert row is not None
        assert (row.object_key, row.multipart_upload_id) == (upload["Key"], upload["UploadId"])

        last = await api.chunk(session_id, len(chunks) - 1, chunks[-1])
        assert last.status_code == 200, last.text
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["key"] == upload["Key"]
    assert data["sha256"] == sha256(long_wav)
    assert data["size"] == len(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    head = s3.head_object(Bucket=bucket, Key=data["key"])
    # The upload was created with the type chunk 0's head showed, and the metadata known
    # at init; the audio facts and the computed SHA-256 are in the response only.
    assert data["content_type"] == "audio/wav"
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"] == {"upload-session-id": session_id, "main-service-file-id": "42"}
    assert data["audio_format"] == "wav"
    assert open_uploads(s3, bucket) == []


async def test_small_chunks_start_a_pass_per_part_not_per_chunk(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, 256 * 1024)
    async with service(settings) as (http, uploads):
        assert uploads.eager is not None
        store = uploads.eager.store
        listings = 0
        list_chunks = store.list_chunks

        async def counted(session_id: str) -> list[StoredChunk]:
            nonlocal listings
            listings += 1
            return await list_chunks(session_id)

        store.list_chunks = counted  # type: ignore[method-assign]
        api = UploadApi(http, keypair)
        session_id = await api.session()
        for index, chunk in enumerate(chunks[:-1]):  # in order, one at a time
            assert (await api.chunk(session_id, index, chunk)).status_code == 200
        full_parts = sum(len(c) for c in chunks[:-1]) // PART_SIZE
        await flushed_parts(s3, bucket, full_parts)
        store.list_chunks = list_chunks  # type: ignore[method-assign]
    # One pass for chunk 0 and one per part boundary crossed (a pass may look twice),
    # where a pass per chunk would have listed them len(chunks) - 1 times.
    assert full_parts >= 4
    assert listings <= 2 * (full_parts + 1)
    assert listings < (len(chunks) - 1) // 4


async def test_sha256_declared_at_init_is_in_the_eager_objects_metadata(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session(sha256=sha256(long_wav))
        await api.send_all(session_id, chunks)
        await flushed_parts(s3, bucket, len(long_wav) // PART_SIZE)
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        key = response.json()["data"]["key"]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"]["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, key) == long_wav


async def test_chunk_zero_that_is_not_audio_starts_no_upload_and_completion_refuses_it(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    # Enough bytes for several parts, none of them audio (the WAV's bytes, reversed).
    chunks = split(bytes(reversed(long_wav)), CHUNK_SIZE)
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        assert uploads.eager is not None
        assert await uploads.eager.flush_once(session_id) == 0
        assert open_uploads(s3, bucket) == []
        row = await uploads.store.get(session_id)
        assert row is not None and row.multipart_upload_id is None
        refused = await api.complete(session_id, len(chunks))
        assert_error(refused, 415, "unsupported_audio")
    assert open_uploads(s3, bucket) == []
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []


async def test_refusal_at_completion_aborts_the_eager_upload_and_stays_completable(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        await flushed_parts(s3, bucket, len(long_wav) // PART_SIZE)
        # Chunk 0 re-sent as non-audio after the upload was created from its old head.
        garbage = bytes(len(chunks[0]))
        assert (await api.chunk(session_id, 0, garbage)).status_code == 200
        refused = await api.complete(session_id, len(chunks))
        assert_error(refused, 415, "unsupported_audio")
        assert open_uploads(s3, bucket) == []
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []

        assert (await api.chunk(session_id, 0, chunks[0])).status_code == 200
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    assert open_uploads(s3, bucket) == []


async def test_content_type_other_than_at_creation_falls_back_to_the_plain_path(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, tmp_path: Path
) -> None:
    for kind in ("aac", "m4a"):
        if reason := missing_encoder(kind):
            pytest.skip(reason)
    # ".aac" may hold raw ADTS (audio/aac) or MP4 (audio/mp4): chunk 0 is ADTS when the
    # upload is created, then re-sent as the MP4 file's head.
    adts = make_audio("aac", tmp_path / "head.aac", 70).read_bytes()
    mp4 = make_audio("m4a", tmp_path / "body.m4a", 420).read_bytes()
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(mp4, MiB)
    assert len(adts) >= MiB and len(mp4) > PART_SIZE + MiB
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session(name="voice.aac")
        await api.send_all(session_id, [adts[:MiB], *chunks[1:]])
        await flushed_parts(s3, bucket, 1)
        assert (await api.chunk(session_id, 0, chunks[0])).status_code == 200
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["content_type"] == "audio/mp4"
    head = s3.head_object(Bucket=bucket, Key=data["key"])
    assert head["ContentType"] == "audio/mp4"
    # The plain path's object: every fact in its metadata.
    assert head["Metadata"]["audio-format"] == "m4a"
    assert head["Metadata"]["sha256"] == sha256(mp4)
    assert stored_bytes(s3, bucket, data["key"]) == mp4
    assert open_uploads(s3, bucket) == []


async def test_nothing_is_flushed_until_chunk_zero_arrives(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        for index in reversed(range(1, len(chunks))):
            assert (await api.chunk(session_id, index, chunks[index])).status_code == 200
        assert uploads.eager is not None
        assert await uploads.eager.flush_once(session_id) == 0
        assert open_uploads(s3, bucket) == []
        assert (await api.chunk(session_id, 0, chunks[0])).status_code == 200
        await flushed_parts(s3, bucket, len(long_wav) // PART_SIZE)
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        key = response.json()["data"]["key"]
    assert stored_bytes(s3, bucket, key) == long_wav


async def test_resent_chunks_after_their_parts_were_flushed_give_the_new_bytes(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        # First a wrong version of everything after the header, all flushed...
        garbled = [chunks[0]] + [bytes(reversed(c)) for c in chunks[1:]]
        await api.send_all(session_id, garbled, parallel=3, shuffle=True)
        await flushed_parts(s3, bucket, len(long_wav) // PART_SIZE)
        # ...then chunk 1 re-sent at another size (every later offset moves) and the
        # others re-sent with their true bytes.
        replaced = [chunks[0], chunks[1][:MiB], chunks[1][MiB:] + chunks[2], *chunks[3:]]
        for index in range(1, len(replaced)):
            response = await api.chunk(session_id, index, replaced[index])
            assert response.status_code == 200, response.text
        response = await api.complete(session_id, len(replaced))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    expected = b"".join(replaced)
    assert expected == long_wav
    assert data["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    assert open_uploads(s3, bucket) == []


def spy_on_finish(uploads: UploadService) -> list[EagerResult | None]:
    """What each `complete` did on the eager path (parts sent, prefix bytes re-hashed)."""
    assert uploads.eager is not None
    results: list[EagerResult | None] = []
    finish = uploads.eager.finish

    async def spy(*args: Any, **kwargs: Any) -> EagerResult | None:
        result = await finish(*args, **kwargs)
        results.append(result)
        return result

    uploads.eager.finish = spy  # type: ignore[method-assign]
    return results


@pytest.mark.parametrize("resend_chunk_2", [False, True])
async def test_complete_after_a_restart_resumes_the_hash_from_the_part_rows(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    long_wav: bytes,
    resend_chunk_2: bool,
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    full_parts = len(long_wav) // PART_SIZE
    first = list(chunks)
    if resend_chunk_2:
        first[2] = bytes(reversed(chunks[2]))  # bytes 6-9 MiB: inside part 2
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, first)

        async def recorded() -> bool:
            # The part rows, not just the parts in S3: closing cancels a pass.
            assert uploads.eager is not None
            row = await uploads.store.get(session_id)
            upload_id = row.multipart_upload_id if row else None
            if upload_id is None:
                return False
            rows = await uploads.eager.parts.list_parts(session_id, upload_id)
            return len([r for r in rows if r.checkpoint is not None]) == full_parts

        await until(recorded)
    # A fresh process: nothing hashed in memory, only the part rows.
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        results = spy_on_finish(uploads)
        if resend_chunk_2:
            # Starts no flush here (no part boundary): complete sees the stale parts.
            assert (await api.chunk(session_id, 2, chunks[2])).status_code == 200
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    [result] = results
    assert result is not None
    if resend_chunk_2:
        # Part 2 is sent again; parts 3 and on still hold their bytes, but the states
        # saved with them were computed on the old part 2: they are hashed again.
        assert result.parts_sent_at_complete == 2
        assert result.prefix_rehashed_bytes == (full_parts - 2) * PART_SIZE
    else:
        assert result.parts_sent_at_complete == 1  # the tail
        assert result.prefix_rehashed_bytes == 0


async def test_abort_aborts_the_multipart_upload(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        await flushed_parts(s3, bucket, 1)
        response = await api.abort(session_id)
        assert response.status_code == 200, response.text
        assert open_uploads(s3, bucket) == []
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        assert_error(await api.complete(session_id, len(chunks)), 409, "session_not_completable")


async def test_declared_sha256_mismatch_aborts_the_eager_upload_and_stays_completable(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, _):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        await flushed_parts(s3, bucket, len(long_wav) // PART_SIZE)
        wrong = await api.complete(session_id, len(chunks), sha256="0" * 64)
        assert_error(wrong, 422, "checksum_mismatch")
        assert open_uploads(s3, bucket) == []
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        response = await api.complete(session_id, len(chunks), sha256=sha256(long_wav))
        assert response.status_code == 200, response.text
        key = response.json()["data"]["key"]
    assert stored_bytes(s3, bucket, key) == long_wav


async def test_with_eager_flush_off_nothing_is_sent_before_complete(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, long_wav: bytes
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=False)
    bucket = settings.s3_bucket_name
    chunks = split(long_wav, CHUNK_SIZE)
    async with service(settings) as (http, uploads):
        assert uploads.eager is None
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        assert open_uploads(s3, bucket) == []
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        key = response.json()["data"]["key"]
    assert stored_bytes(s3, bucket, key) == long_wav


# ------------------------------------------------------------------ crash mid-flush
class SlowProxy:
    """Forwards TCP to S3 at a fixed total rate, so a flush takes long enough to be
    interrupted with some parts sent and others not."""

    def __init__(self, port: int, bytes_per_second: int) -> None:
        self.port = port
        self.piece_bytes = 64 * 1024
        self.pause_seconds = self.piece_bytes / bytes_per_second
        self._server: asyncio.Server | None = None
        self._turn = asyncio.Lock()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, slow=True), self._pipe(up_reader, writer, slow=False)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool
    ) -> None:
        try:
            while data := await reader.read(self.piece_bytes):
                if slow:
                    async with self._turn:
                        await asyncio.sleep(self.pause_seconds)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
def service_process_env(
    keypair: KeyPair, s3_server: LocalS3Server, bucket: str, tmp_path: Path
) -> Callable[..., dict[str, str]]:
    def make(**overrides: str) -> dict[str, str]:
        database = {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"}
        return service_env(
            keypair,
            s3_server.endpoint_url,
            bucket,
            database,
            tmp_path / "staging",
            s3_part_size_bytes=PART_SIZE,
            eager_flush="true",
            **overrides,
        )

    return make


async def test_kill_9_mid_flush_then_restart_and_complete_gives_the_exact_file(
    service_process_env: Callable[..., dict[str, str]],
    s3_server: LocalS3Server,
    bucket: str,
    keypair: KeyPair,
    s3: Any,
    long_wav: bytes,
    tmp_path: Path,
) -> None:
    chunks = split(long_wav, CHUNK_SIZE)
    total_parts = len(long_wav) // PART_SIZE
    proxy = await SlowProxy(s3_server.port, bytes_per_second=16 * MiB).start()
    first = ServiceProcess(
        service_process_env(S3_ENDPOINT_URL=proxy.url, S3_MAX_CONCURRENCY="1"), tmp_path
    )
    await asyncio.to_thread(first.start)
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=60) as http:
            api = UploadApi(http, keypair)
            session_id = await api.session()
            await api.send_all(session_id, chunks)
            await flushed_parts(s3, bucket, 1)
            first.kill()
    finally:
        first.stop()
        await proxy.stop()
    assert 1 <= parts_in_s3(s3, bucket) < total_parts, "the flush was not in flight"

    second = ServiceProcess(service_process_env(), tmp_path)
    await asyncio.to_thread(second.start)
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=60) as http:
            api = UploadApi(http, keypair)
            response = await api.complete(session_id, len(chunks))
            assert response.status_code == 200, response.text
            data = response.json()["data"]
    finally:
        second.stop()
    assert data["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    assert open_uploads(s3, bucket) == []
    # The restarted process completed the upload the first one created (it knew the
    # Content-Type from the row), not a fresh plain-path one (which would carry facts).
    head = s3.head_object(Bucket=bucket, Key=data["key"])
    assert head["ContentType"] == "audio/wav"
    assert "audio-format" not in head["Metadata"]


async def test_chunks_resent_while_their_parts_are_in_flight_give_the_new_bytes(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    s3_server: LocalS3Server,
    long_wav: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chunks = split(long_wav, CHUNK_SIZE)
    proxy = await SlowProxy(s3_server.port, bytes_per_second=16 * MiB).start()
    try:
        settings = settings_factory(
            s3_part_size_bytes=PART_SIZE,
            eager_flush=True,
            s3_endpoint_url=proxy.url,
            s3_max_concurrency=1,
        )
        bucket = settings.s3_bucket_name
        async with service(settings) as (http, _):
            api = UploadApi(http, keypair)
            session_id = await api.session()
            garbled = [chunks[0]] + [bytes(reversed(c)) for c in chunks[1:]]
            await api.send_all(session_id, garbled)
            await flushed_parts(s3, bucket, 1)
            # The later parts are in flight or queued with the wrong bytes.
            assert parts_in_s3(s3, bucket) < len(long_wav) // PART_SIZE
            for index in range(1, len(chunks)):
                response = await api.chunk(session_id, index, chunks[index])
                assert response.status_code == 200, response.text
            response = await api.complete(session_id, len(chunks))
            assert response.status_code == 200, response.text
            data = response.json()["data"]
    finally:
        await proxy.stop()
    assert data["sha256"] == sha256(long_wav)
    assert stored_bytes(s3, bucket, data["key"]) == long_wav
    assert open_uploads(s3, bucket) == []
    # A re-sent chunk whose old file a pass was about to read or send is not a storage
    # failure: the pass lists the chunks again instead of giving up until the next chunk.
    assert "upload.eager_flush_failed" not in capsys.readouterr().err
