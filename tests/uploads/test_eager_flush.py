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
from app.uploads.service import UploadService
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
    assert head["ContentType"] == data["content_type"]
    # Metadata fixed after the eager commit (the upload began before it was known).
    assert head["Metadata"]["sha256"] == sha256(long_wav)
    assert head["Metadata"]["audio-format"] == "wav"
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
