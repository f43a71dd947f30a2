"""`complete` on a replica that did not flush the parts hashes only the tail (issue 13):
the SHA-256 state after each eager part is in its part row, so the flushed prefix is not
read back from S3 staging, in the common case nor after a take-over of a dead flusher.

Real processes: three services (S3 staging, PostgreSQL, one moto), each talking to S3
through its own loopback tap that counts the bytes the replica reads from S3 (response
bytes) and its part uploads, and that can withhold the answers to part uploads (the
part lands in S3; the replica never hears of it)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from tests.processes import ServiceProcess, make_wav, service_env, wait_until
from tests.support import split

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database", ["postgres"], indirect=True)]
KiB = 1024
MiB = 1024 * KiB
PART = 5 * MiB
CHUNK = 1 * MiB
LEASE_SECONDS = 10
# What `complete` may read besides the parts it sends: the audio check's head and tail
# windows (README: at most 4 MiB, ranged GETs of at least 1 MiB, one window may round up
# to a chunk's end) and S3's XML answers.
AUDIO_WINDOWS = 5 * MiB
ANSWERS = 256 * KiB


class S3Tap:
    """A loopback proxy in front of the S3 server for one replica."""

    def __init__(self, target_url: str) -> None:
        parsed = httpx.URL(target_url)
        self.target = (parsed.host, parsed.port or 80)
        self.read_bytes = 0
        self.part_uploads = 0
        self.withhold_part_answers = False
        self.withheld = 0
        self.on_commit: Callable[[bytes], None] | None = None
        self._lock = threading.Lock()
        self._release = threading.Event()
        tap = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                tap._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            return
        # Whether the request in flight on this connection is a part upload whose answer
        # is withheld (a client sends its next request only after the answer).
        withhold = threading.Event()
        back = threading.Thread(target=self._down, args=(upstream, client, withhold), daemon=True)
        back.start()
        self._up(client, upstream, withhold)
        back.join(timeout=5)

    def _up(self, source: socket.socket, target: socket.socket, withhold: threading.Event) -> None:
        tail = b""
        commit = b""
        try:
            while data := source.recv(65536):
                window = tail + data
                if b"partNumber=" in window and b"partNumber=" not in tail:
                    with self._lock:
                        self.part_uploads += 1
                    if self.withhold_part_answers:
                        withhold.set()
                tail = window[-64:]
                if self.on_commit is not None and (commit or b"<CompleteMultipartUpload" in data):
                    commit += data
                    if b"</CompleteMultipartUpload>" not in commit:
                        continue
                    self.on_commit(commit)
                    data, commit = commit, b""
                target.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source, target)

    def _down(
        self, source: socket.socket, target: socket.socket, withhold: threading.Event
    ) -> None:
        try:
            while data := source.recv(65536):
                if withhold.is_set() and not data.startswith(b"HTTP/1.1 100"):
                    with self._lock:
                        self.withheld += 1
                    self._release.wait()
                    return
                with self._lock:
                    self.read_bytes += len(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source, target)


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Replica:
    service: ServiceProcess
    tap: S3Tap
    token: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(
            method, self.service.url + path, headers=headers, timeout=120, **kwargs
        )

    def init(self, data: bytes) -> str:
        body = {"main_service_file_id": 42, "original_file_name": "voice.wav"}
        response = self.call("POST", "/upload/init", json=body)
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

    def complete_retrying(self, session_id: str, total_chunks: int) -> httpx.Response:
        """`complete`, retried while another holder's lease has not lapsed (409)."""

        def attempt() -> httpx.Response | None:
            response = self.complete(session_id, total_chunks)
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "completion_in_progress"
                return None
            return response

        answer: httpx.Response = wait_until(
            attempt, timeout_seconds=90, what="the completion to go through"
        )
        return answer


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = make_wav(tmp_path_factory.mktemp("audio") / "long.wav", 150)  # ~26 MB
    assert len(data) // PART >= 5 and len(data) % PART
    return data


@pytest.fixture
def start_replica(
    keypair: KeyPair,
    s3_server: LocalS3Server,
    bucket: str,
    database: dict[str, Any],
    tmp_path: Path,
) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(name: str) -> Replica:
        tap = S3Tap(s3_server.endpoint_url)
        env = service_env(
            keypair,
            tap.url,
            bucket,
            database,
            tmp_path / name / "staging",
            staging_backend="s3",
            s3_staging_prefix="staging/",
            s3_part_size_bytes=PART,
            completion_lease_seconds=LEASE_SECONDS,
            s3_timeout_seconds=300,
        )
        replica = Replica(
            ServiceProcess(env, tmp_path / name / "run"), tap, keypair.token("user-1")
        )
        started.append(replica)
        replica.service.start()
        return replica

    yield start
    for replica in started:
        replica.service.stop()
        replica.tap.stop()


def eager_parts(s3: Any, bucket: str) -> list[int]:
    """The part numbers the (one) open multipart upload holds in S3."""
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if not uploads:
        return []
    [upload] = uploads
    listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return [int(part["PartNumber"]) for part in listed.get("Parts", [])]


class CommitWatch:
    """At each CompleteMultipartUpload: the parts S3 holds then, and the parts listed."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket
        self.seen: list[tuple[list[int], list[int]]] = []

    def __call__(self, body: bytes) -> None:
        listed = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", body)]
        self.seen.append((eager_parts(self.s3, self.bucket), listed))


def object_sha256(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def test_complete_on_a_replica_that_flushed_no_part_reads_back_only_the_tail(
    start_replica: Callable[[str], Replica], s3: Any, bucket: str, source: bytes
) -> None:
    flushers = [start_replica("r0"), start_replica("r1")]
    finisher = start_replica("r2")
    chunks = split(source, CHUNK)
    full_parts = len(source) // PART
    session_id = finisher.init(source)
    # Round-robin over two replicas; the third gets only the tail, which starts no flush
    # there, then completes: it hashed nothing itself.
    for index, data in enumerate(chunks[:-1]):
        flushers[index % 2].chunk(session_id, index, data)
    wait_until(
        lambda: len(eager_parts(s3, bucket)) >= 2,
        timeout_seconds=120,
        what="the eager flush of the first parts",
    )
    finisher.chunk(session_id, len(chunks) - 1, chunks[-1])
    # Parts flushed so far; a pass still running adds parts, and so lowers what
    # `complete` reads (it waits for the flusher's lease first).
    flushed = eager_parts(s3, bucket)
    assert flushed == list(range(1, len(flushed) + 1))
    assert finisher.tap.part_uploads == 0
    watch = CommitWatch(s3, bucket)
    finisher.tap.on_commit = watch
    read_before = finisher.tap.read_bytes

    response = finisher.complete_retrying(session_id, len(chunks))

    read = finisher.tap.read_bytes - read_before
    assert response.status_code == 200, response.text
    result = response.json()["data"]
    assert result["sha256"] == hashlib.sha256(source).hexdigest()
    assert object_sha256(s3, bucket, result["key"]) == result["sha256"]
    # The flushed prefix was not read back: without the saved states this replica read
    # the whole file, at least 10 MiB more than this.
    not_flushed = len(source) - len(flushed) * PART
    assert read <= not_flushed + AUDIO_WINDOWS + ANSWERS, (read, not_flushed)
    [(held, listed)] = watch.seen
    assert held == listed == list(range(1, full_parts + 2))


def test_kill_9_mid_flush_survivor_completes_without_reading_the_flushed_prefix(
    start_replica: Callable[[str], Replica], s3: Any, bucket: str, source: bytes
) -> None:
    a, b, c = (start_replica(name) for name in "abc")
    chunks = split(source, CHUNK)
    per_part = PART // CHUNK
    before_kill = 3  # parts b flushes (and records) before a takes over the flush
    session_id = b.init(source)
    for index in range(before_kill * per_part + 1):
        b.chunk(session_id, index, chunks[index])
    wait_until(
        lambda: len(eager_parts(s3, bucket)) >= before_kill,
        timeout_seconds=120,
        what="b to flush the first parts",
    )
    # a gets the rest: its part uploads reach S3, their answers never reach a.
    a.tap.withhold_part_answers = True
    for index in range(before_kill * per_part + 1, len(chunks) - 1):
        a.chunk(session_id, index, chunks[index])
    wait_until(lambda: a.tap.withheld >= 1, timeout_seconds=120, what="a mid-flush")
    a.service.kill()
    c.chunk(session_id, len(chunks) - 1, chunks[-1])

    watch = CommitWatch(s3, bucket)
    c.tap.on_commit = watch
    read_before = c.tap.read_bytes
    response = c.complete_retrying(session_id, len(chunks))
    read = c.tap.read_bytes - read_before

    assert response.status_code == 200, response.text
    result = response.json()["data"]
    assert result["sha256"] == hashlib.sha256(source).hexdigest()
    assert object_sha256(s3, bucket, result["key"]) == result["sha256"]
    # The Ceph rule: what S3 held at the commit is what the commit listed.
    full_parts = len(source) // PART
    [(held, listed)] = watch.seen
    assert held == listed == list(range(1, full_parts + 2))
    # c resumed the hash after b's parts: it read back only what followed them.
    after_flushed = len(source) - before_kill * PART
    assert read <= after_flushed + AUDIO_WINDOWS + ANSWERS, (read, after_flushed)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="staging/").get("KeyCount", 0) == 0
