"""kill -9 of a real service process mid-chunk and mid-complete, then a restart: no
corrupt chunk is visible, the client finishes by retrying, the object's SHA-256 is the
source's, and what the crash left behind (a temp file, a dangling multipart upload) is
reclaimed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.container import build_container, build_verifier
from app.janitor import JanitorReport, run_pass
from app.settings import load_settings
from app.uploads.models import utc_now
from tests.processes import (
    HoldingProxy,
    ServiceProcess,
    chunk_request,
    make_wav,
    service_env,
    staged_files,
    wait_until,
)
from tests.support import split

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
CHUNK = 2 * MiB


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_wav(tmp_path_factory.mktemp("audio") / "source.wav", 30)  # ~5.3 MB


@pytest.fixture
def sqlite(tmp_path: Path) -> dict[str, str]:
    return {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"}


class Client:
    def __init__(self, service: ServiceProcess, keypair) -> None:
        self.service = service
        self.token = keypair.token("user-1")
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.service.url + path, headers=self.headers, timeout=120, **kwargs)

    def init(self, data: bytes) -> str:
        response = self.post(
            "/upload/init",
            json={
                "main_service_file_id": 42,
                "original_file_name": "voice.wav",
                "total_size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["data"]["upload_session_id"])

    def chunk(self, session_id: str, index: int, data: bytes) -> httpx.Response:
        return self.post(
            "/upload/chunk",
            data={"upload_session_id": session_id, "chunk_index": str(index)},
            files={"chunk": ("blob", data)},
        )

    def complete(self, session_id: str, total_chunks: int) -> httpx.Response:
        body = {"upload_session_id": session_id, "total_chunks": total_chunks}
        return self.post("/upload/complete", json={**body, "main_service_file_id": 42})

    def status(self, session_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.service.url}/upload/{session_id}", headers=self.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        return dict(response.json()["data"])

    def send_partial(
        self, session_id: str, index: int, data: bytes, share: float
    ) -> tuple[socket.socket, bytes]:
        """Send the head and `share` of the body; returns the socket and the rest."""
        head, body = chunk_request("127.0.0.1", self.token, session_id, index, data)
        sock = socket.create_connection(("127.0.0.1", self.service.port))
        cut = int(len(body) * share)
        sock.sendall(head + body[:cut])
        return sock, body[cut:]


def _object_sha256(s3, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def test_kill_9_mid_chunk_then_resume(keypair, s3_server, s3, bucket, sqlite, tmp_path, source):
    staging = tmp_path / "staging"
    env = service_env(keypair, s3_server.endpoint_url, bucket, sqlite, staging)
    chunks = split(source, CHUNK)
    assert len(chunks) == 3
    service = ServiceProcess(env, tmp_path / "run").start()
    try:
        client = Client(service, keypair)
        session_id = client.init(source)
        assert client.chunk(session_id, 0, chunks[0]).status_code == 200
        assert client.chunk(session_id, 2, chunks[2]).status_code == 200
        # Chunk 1 is three quarters written (past the first flush to disk) when killed.
        stalled, _ = client.send_partial(session_id, 1, chunks[1], 0.75)
        wait_until(
            lambda: staged_files(staging, "incoming"), timeout_seconds=30, what="a temp file"
        )
        service.kill()
        stalled.close()
    finally:
        service.stop()

    leftovers = staged_files(staging, "incoming")
    assert len(leftovers) == 1
    assert len(staged_files(staging, "sessions")) == 2
    # Age the leftover past the grace period: the restarted service's start-up removes it.
    two_hours_ago = time.time() - 7200
    os.utime(leftovers[0], (two_hours_ago, two_hours_ago))

    service = ServiceProcess(env, tmp_path / "run").start()
    try:
        client = Client(service, keypair)
        wait_until(
            lambda: not staged_files(staging, "incoming"),
            timeout_seconds=30,
            what="start-up to remove the stale temp file",
        )
        status = client.status(session_id)
        assert (status["state"], status["received_chunks"]) == ("uploading", [0, 2])
        assert status["received_bytes"] == len(chunks[0]) + len(chunks[2])
        assert client.chunk(session_id, 1, chunks[1]).status_code == 200
        done = client.complete(session_id, 3)
        assert done.status_code == 200, done.text
        result = done.json()["data"]
        assert result["sha256"] == hashlib.sha256(source).hexdigest()
        assert _object_sha256(s3, bucket, result["key"]) == hashlib.sha256(source).hexdigest()
    finally:
        service.stop()


def test_kill_9_mid_complete_then_retry_takes_over(
    keypair, s3_server, s3, bucket, sqlite, tmp_path, source
):
    staging = tmp_path / "staging"
    proxy = HoldingProxy(s3_server.endpoint_url, b"partNumber=")
    env = service_env(
        keypair,
        proxy.url,
        bucket,
        sqlite,
        staging,
        s3_timeout_seconds=300,
        # The slow path's crash: with eager flush the retry resumes the crashed upload
        # (tests/uploads/test_eager_flush.py), leaving none for the janitor.
        eager_flush="false",
    )
    chunks = split(source, CHUNK)
    service = ServiceProcess(env, tmp_path / "run").start()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        client = Client(service, keypair)
        session_id = client.init(source)
        for index, data in enumerate(chunks):
            assert client.chunk(session_id, index, data).status_code == 200
        pending = pool.submit(client.complete, session_id, len(chunks))
        # Frozen mid-way: the multipart upload exists and a part is on the wire.
        wait_until(lambda: proxy.held >= 1, timeout_seconds=60, what="a part upload")
        assert client.status(session_id)["state"] == "completing"
        dangling = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
        assert len(dangling) == 1
        service.kill()
        with pytest.raises(httpx.HTTPError):
            pending.result(timeout=60)
    finally:
        pool.shutdown(wait=False)
        proxy.stop()
        service.stop()

    env["S3_ENDPOINT_URL"] = s3_server.endpoint_url
    service = ServiceProcess(env, tmp_path / "run").start()
    restarted_at = time.monotonic()
    try:
        client = Client(service, keypair)
        assert client.status(session_id)["state"] == "completing"

        def retried() -> httpx.Response | None:
            response = client.complete(session_id, len(chunks))
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "completion_in_progress"
                return None
            return response

        # The crashed holder's lease (COMPLETION_LEASE_SECONDS, 10 s by default) lapses
        # and a retry takes the work over: completed within half a minute of the restart.
        done = wait_until(retried, timeout_seconds=30, what="the lease to lapse")
        assert done.status_code == 200, done.text
        assert time.monotonic() - restarted_at < 30
        key = done.json()["data"]["key"]
        assert _object_sha256(s3, bucket, key) == hashlib.sha256(source).hexdigest()
        assert staged_files(staging, "sessions") == []
    finally:
        service.stop()

    # The crashed attempt's multipart upload is still there until a janitor pass.
    remaining = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in remaining] == [dangling[0]["UploadId"]]
    report = asyncio.run(_janitor_pass(env, later_seconds=2 * 3600))
    assert report.aborted_multipart_uploads == 1
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def _janitor_pass(env: dict[str, str], *, later_seconds: int) -> JanitorReport:
    """What `upload-admin janitor run` does, with the clock moved forward."""
    settings = load_settings(_env_file=None, **{name.lower(): v for name, v in env.items()})
    container = await build_container(settings, build_verifier(settings))
    try:
        return await run_pass(container, now=utc_now() + timedelta(seconds=later_seconds))
    finally:
        await container.close()
