"""Replicas that share only PostgreSQL and the bucket (issue 13), as real processes: three
services with their own staging directories, one PostgreSQL schema, one S3 server over
HTTP, chunks staged in S3 (`STAGING_BACKEND=s3`). A client spreads every call of an upload
over the replicas; replicas are killed (-9) mid-chunk and mid-complete, and their staging
directories wiped; what any of them acknowledged is never lost, and a `complete` cut by a
crash is finished by a survivor within about one lease."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from tests.processes import (
    HoldingProxy,
    ServiceProcess,
    chunk_request,
    make_wav,
    service_env,
    wait_until,
)
from tests.support import split

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database", ["postgres"], indirect=True)]
KiB = 1024
CHUNK = 512 * KiB
STAGING_PREFIX = "staging/"
LEASE_SECONDS = 10


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_wav(tmp_path_factory.mktemp("audio") / "source.wav", 20)  # ~3.5 MB


class Replica:
    def __init__(self, service: ServiceProcess, staging: Path, keypair: KeyPair) -> None:
        self.service = service
        self.staging = staging
        self.token = keypair.token("user-1")

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(
            method, self.service.url + path, headers=headers, timeout=120, **kwargs
        )

    def init(self, data: bytes) -> str:
        response = self.call(
            "POST",
            "/upload/init",
            json={
                "main_service_file_id": 42,
                "original_file_name": "voice.wav",
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["data"]["upload_session_id"])

    def chunk(self, session_id: str, index: int, data: bytes) -> None:
        response = self.call(
            "POST",
            "/upload/chunk",
            data={"upload_session_id": session_id, "chunk_index": str(index)},
            files={"chunk": ("blob", data)},
        )
        assert response.status_code == 200, response.text

    def complete(self, session_id: str, total_chunks: int) -> httpx.Response:
        body = {"upload_session_id": session_id, "total_chunks": total_chunks}
        return self.call("POST", "/upload/complete", json={**body, "main_service_file_id": 42})

    def status(self, session_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/upload/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json()["data"])

    def local_files(self) -> list[Path]:
        return sorted(p for p in self.staging.rglob("*") if p.is_file() and p.suffix != ".db")


@pytest.fixture
def start_replica(
    keypair: KeyPair,
    s3_server: LocalS3Server,
    bucket: str,
    database: dict[str, Any],
    tmp_path: Path,
) -> Iterator[Callable[..., Replica]]:
    started: list[ServiceProcess] = []

    def start(name: str, *, endpoint_url: str | None = None) -> Replica:
        staging = tmp_path / name / "staging"
        env = service_env(
            keypair,
            endpoint_url or s3_server.endpoint_url,
            bucket,
            database,
            staging,
            staging_backend="s3",
            s3_staging_prefix=STAGING_PREFIX,
            completion_lease_seconds=LEASE_SECONDS,
            s3_timeout_seconds=300,
        )
        service = ServiceProcess(env, tmp_path / name / "run")
        started.append(service)
        service.start()
        return Replica(service, staging, keypair)

    yield start
    for service in started:
        service.stop()


def staged_objects(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=STAGING_PREFIX)
    return [item["Key"] for item in listed.get("Contents", [])]


def stored_sha256(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def test_round_robin_over_three_replicas_with_wiped_staging_and_two_completes(
    start_replica: Callable[..., Replica], s3: Any, bucket: str, source: bytes
) -> None:
    replicas = [start_replica(f"r{i}") for i in range(3)]
    chunks = split(source, CHUNK)
    assert len(chunks) >= 6
    session_id = replicas[0].init(source)
    half = len(chunks) // 2
    for index in range(half):
        replicas[index % 3].chunk(session_id, index, chunks[index])
    # Every pod replaced its volume mid-upload: local staging holds nothing we need.
    for replica in replicas:
        shutil.rmtree(replica.staging)
    for index in range(half, len(chunks)):
        replicas[(index + 1) % 3].chunk(session_id, index, chunks[index])
    replicas[2].chunk(session_id, 0, chunks[0])  # a re-send, on another replica
    for replica in replicas:
        status = replica.status(session_id)
        assert status["received_chunks"] == list(range(len(chunks)))
        assert status["received_bytes"] == len(source)

    # Two completes at once on two replicas: one object, every answer 200 or 409.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(lambda r: r.complete(session_id, len(chunks)), [replicas[1], replicas[2]])
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes in ([200, 200], [200, 409]), [a.text for a in answers]
    bodies = {answer.text for answer in answers if answer.status_code == 200}
    assert len(bodies) == 1
    result = answers[codes.index(200) if answers[0].status_code == 200 else 1].json()["data"]
    assert result["sha256"] == hashlib.sha256(source).hexdigest()
    assert stored_sha256(s3, bucket, result["key"]) == result["sha256"]
    again = replicas[0].complete(session_id, len(chunks))
    assert again.status_code == 200 and again.json()["data"] == result

    # Nothing staged remains, in S3 or on any replica's disk; no dangling upload.
    assert staged_objects(s3, bucket) == []
    assert [replica.local_files() for replica in replicas] == [[], [], []]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == [result["key"]]


def test_kill_9_mid_chunk_and_mid_complete_a_survivor_finishes_within_a_lease(
    start_replica: Callable[..., Replica],
    s3_server: LocalS3Server,
    s3: Any,
    bucket: str,
    source: bytes,
) -> None:
    # Replica a's S3 traffic freezes at its first part upload: a complete cut mid-way.
    proxy = HoldingProxy(s3_server.endpoint_url, b"partNumber=")
    try:
        a = start_replica("a", endpoint_url=proxy.url)
        b = start_replica("b")
        c = start_replica("c")
        chunks = split(source, CHUNK)
        session_id = b.init(source)
        for index, data in enumerate(chunks[:-1]):
            [a, b, c][index % 3].chunk(session_id, index, data)

        # b dies with the last chunk mostly received: every chunk it acknowledged stays.
        last = len(chunks) - 1
        head, body = chunk_request("127.0.0.1", b.token, session_id, last, chunks[last])
        stalled = socket.create_connection(("127.0.0.1", b.service.port))
        stalled.sendall(head + body[: len(body) * 9 // 10])
        wait_until(
            lambda: b.local_files(), timeout_seconds=30, what="b to stage the chunk in flight"
        )
        b.service.kill()
        stalled.close()
        status = c.status(session_id)
        assert status["received_chunks"] == list(range(last))
        c.chunk(session_id, last, chunks[last])

        pending = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        cut = pending.submit(a.complete, session_id, len(chunks))
        wait_until(lambda: proxy.held >= 1, timeout_seconds=60, what="a's part upload")
        assert c.status(session_id)["state"] == "completing"
        a.service.kill()
        killed_at = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            cut.result(timeout=60)
        pending.shutdown(wait=False)

        def retried() -> httpx.Response | None:
            response = c.complete(session_id, len(chunks))
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "completion_in_progress"
                return None
            return response

        done = wait_until(retried, timeout_seconds=60, what="a survivor to take over")
        took_seconds = time.monotonic() - killed_at
    finally:
        proxy.stop()
    assert done.status_code == 200, done.text
    # Within about half a minute of the crash, not the 15 minutes of the old claim.
    assert took_seconds < 30, took_seconds
    result = done.json()["data"]
    assert result["sha256"] == hashlib.sha256(source).hexdigest()
    assert stored_sha256(s3, bucket, result["key"]) == result["sha256"]
    assert staged_objects(s3, bucket) == []
