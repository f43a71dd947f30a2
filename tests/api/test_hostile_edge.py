"""Hostile input at the edge (issue 12), sent over HTTP to a real service process.

Each test sends what an attacker holding one valid token would send and asserts the
outcome a user would notice: a clear 4xx in the envelope, never a 5xx, and, where the
point is cost, what the request cost the service process (CPU-seconds and resident
memory read from /proc, loose bounds; never wall-clock timings).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server, free_port
from app.metrics import KNOWN_METHODS, OTHER_METHOD
from app.uploads.naming import legacy_object_key, owner_segment
from tests.hostile import (
    FORM_CONTENT_TYPE,
    CostMeter,
    form_body,
    form_part,
    raw_exchange,
    streamed_form,
)
from tests.processes import ServiceProcess, service_env, staged_files, wait_until

MiB = 1024 * 1024
WAV_HEAD = b"RIFF\x24\x08\x00\x00WAVEfmt "  # enough to look like the start of a WAV


@pytest.fixture(scope="module")
def service(
    keypair: KeyPair, s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    root: Path = tmp_path_factory.mktemp("hostile")
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    env = service_env(
        keypair,
        s3_server.endpoint_url,
        bucket,
        {"database_url": f"sqlite+aiosqlite:///{root / 'sessions.db'}"},
        root / "staging",
        EAGER_FLUSH="false",
        MAX_STAGED_BYTES_PER_USER=str(3 * MiB),
        JSON_IDLE_TIMEOUT_SECONDS="1",
    )
    process = ServiceProcess(env, root / "run").start()
    yield process
    process.stop()


def staging_root(service: ServiceProcess) -> Path:
    return Path(service.env["LOCAL_TEMP_CHUNK_PATH"])


def pid_of(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def auth(keypair: KeyPair, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keypair.token(sub)}"}


def new_session(http: httpx.Client, headers: dict[str, str], name: str = "voice.wav") -> str:
    response = http.post(
        "/upload/init",
        json={"main_service_file_id": 7, "original_file_name": name},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["upload_session_id"])


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    body: dict[str, Any] = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code, body
    return body


# ------------------------------------------------------------------ item 1: field flood
def _flood(session_id: str, fields: int) -> Iterator[bytes]:
    yield form_part("upload_session_id", session_id.encode())
    yield form_part("chunk_index", b"0")
    for i in range(fields):
        yield form_part(f"f{i}", b"v")
    yield form_part("chunk", WAV_HEAD + bytes(1024 - len(WAV_HEAD)), file_name="blob")


def test_a_form_field_flood_is_refused_early_and_cheaply(
    service: ServiceProcess, keypair: KeyPair
) -> None:
    headers = auth(keypair, "flooder")
    with httpx.Client(base_url=service.url, timeout=120) as http:
        session_id = new_session(http, headers)
        meter = CostMeter(pid_of(service))

        # 120,000 fields (7.6 MB, under MAX_CHUNK_SIZE) with a Content-Length.
        declared = form_body(_flood(session_id, 120_000))
        assert 7_000_000 < len(declared) < 9_000_000
        meter.start()
        declared_response = http.post(
            "/upload/chunk",
            content=declared,
            headers={**headers, "Content-Type": FORM_CONTENT_TYPE},
        )
        declared_cost = meter.stop()
        print(f"120,000 fields, Content-Length: {declared_cost}")

        # 300,000 fields without a Content-Length (Transfer-Encoding: chunked).
        meter.start()
        chunked_response = http.post(
            "/upload/chunk",
            content=streamed_form(_flood(session_id, 300_000)),
            headers={**headers, "Content-Type": FORM_CONTENT_TYPE},
        )
        chunked_cost = meter.stop()
        print(f"300,000 fields, chunked: {chunked_cost}")
        for response in (declared_response, chunked_response):
            assert_envelope(response, 422, "validation_error")
            assert "too many fields" in response.json()["message"]

        # Loose bounds: the flood costs about what the bytes cost to receive, not seconds
        # of parsing, and memory does not grow with the number of fields.
        for cost in (declared_cost, chunked_cost):
            assert cost.cpu_seconds < 0.8, cost
            assert cost.rss_growth_bytes < 16 * MiB, cost
            assert cost.peak_growth_bytes < 16 * MiB, cost

        # The session is untouched and an honest chunk still goes through.
        honest = http.post(
            "/upload/chunk",
            data={"upload_session_id": session_id, "chunk_index": "0"},
            files={"chunk": ("blob", WAV_HEAD + bytes(1000))},
            headers=headers,
        )
        assert honest.status_code == 200, honest.text


# --------------------------------------------------- items 2 and 3: bytes and the quota
def test_a_chunk_sent_before_its_session_counts_and_is_dropped_when_not_ours(
    service: ServiceProcess, keypair: KeyPair
) -> None:
    owner, intruder = auth(keypair, "quota-owner"), auth(keypair, "quota-intruder")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        victim = new_session(http, owner)
        # The chunk comes first, the session id after it: the bytes are received, then
        # dropped the moment the session turns out to be someone else's.
        body = form_body(
            [
                form_part("chunk", WAV_HEAD + bytes(MiB), file_name="blob"),
                form_part("chunk_index", b"0"),
                form_part("upload_session_id", victim.encode()),
            ]
        )
        response = http.post(
            "/upload/chunk", content=body, headers={**intruder, "Content-Type": FORM_CONTENT_TYPE}
        )
        assert_envelope(response, 404, "session_not_found")
        assert staged_files(staging_root(service), "incoming") == []
        status = http.get(f"/upload/{victim}", headers=owner).json()["data"]
        assert status["received_chunks"] == []

        # Bytes with no session at all count against the sender's quota as they arrive
        # (MAX_STAGED_BYTES_PER_USER is 3 MiB here): cut off at the cap, not at the end.
        orphan = form_body([form_part("chunk", bytes(4 * MiB), file_name="blob")])
        response = http.post(
            "/upload/chunk",
            content=orphan,
            headers={**intruder, "Content-Type": FORM_CONTENT_TYPE},
        )
        body_json = assert_envelope(response, 507, "staging_quota_exceeded")
        assert body_json["error"]["details"] == {"max_staged_bytes_per_user": 3 * MiB}
        assert staged_files(staging_root(service), "incoming") == []


def test_one_user_cannot_stage_more_than_the_per_user_quota(
    service: ServiceProcess, keypair: KeyPair
) -> None:
    hog, other = auth(keypair, "quota-hog"), auth(keypair, "quota-other")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        first, second = new_session(http, hog), new_session(http, hog)

        def chunk(session_id: str, index: int, size: int, headers: dict[str, str]) -> Any:
            return http.post(
                "/upload/chunk",
                data={"upload_session_id": session_id, "chunk_index": str(index)},
                files={"chunk": ("blob", WAV_HEAD + bytes(size - len(WAV_HEAD)))},
                headers=headers,
            )

        assert chunk(first, 0, 2 * MiB, hog).status_code == 200
        # Across sessions: 2 MiB staged + 2 MiB more is over the 3 MiB quota.
        assert_envelope(chunk(second, 0, 2 * MiB, hog), 507, "staging_quota_exceeded")
        assert staged_files(staging_root(service), "incoming") == []
        # Another user is not affected.
        assert chunk(new_session(http, other), 0, 2 * MiB, other).status_code == 200
        # Aborting frees the quota (the remembered figure is re-read within a second).
        assert http.delete(f"/upload/{first}", headers=hog).status_code == 200
        wait_until(
            lambda: chunk(second, 0, 2 * MiB, hog).status_code == 200,
            timeout_seconds=15,
            what="the quota to be freed by the abort",
        )


@pytest.fixture
def small_staging_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB tmpfs; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a size-limited filesystem here")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {made.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_staging_keeps_free_space_for_the_database(
    keypair: KeyPair, s3_server: LocalS3Server, small_staging_filesystem: Path, tmp_path: Path
) -> None:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    # No DATABASE_URL: the default SQLite file lives in the staging directory.
    env = service_env(
        keypair,
        s3_server.endpoint_url,
        bucket,
        {},
        small_staging_filesystem / "staging",
        STAGING_MIN_FREE_BYTES=str(12 * MiB),
        MAX_STAGED_BYTES_PER_USER="0",
    )
    process = ServiceProcess(env, tmp_path / "run").start()
    try:
        headers = auth(keypair, "filler")
        with httpx.Client(base_url=process.url, timeout=60) as http:
            session_id = new_session(http, headers)
            refused = None
            for index in range(12):  # 24 MiB of chunks cannot all fit
                response = http.post(
                    "/upload/chunk",
                    data={"upload_session_id": session_id, "chunk_index": str(index)},
                    files={"chunk": ("blob", WAV_HEAD + bytes(2 * MiB))},
                    headers=headers,
                )
                if response.status_code != 200:
                    refused = response
                    break
            assert refused is not None, "the reserve was never reached"
            body = assert_envelope(refused, 507, "staging_full")
            assert body["error"]["details"] == {"staging_min_free_bytes": 12 * MiB}
            # Staging is full, the database is not: sessions are still created and read.
            someone = auth(keypair, "someone-else")
            other = new_session(http, someone)
            assert http.get(f"/upload/{other}", headers=someone).status_code == 200
            assert http.delete(f"/upload/{session_id}", headers=headers).status_code == 200
            retried = http.post(
                "/upload/chunk",
                data={"upload_session_id": other, "chunk_index": "0"},
                files={"chunk": ("blob", WAV_HEAD + bytes(2 * MiB))},
                headers=someone,
            )
            assert retried.status_code == 200, retried.text
    finally:
        process.stop()


# --------------------------------------------------------- item 4: ASCII chunk indexes
@pytest.mark.parametrize(
    "index", ["\u00b2", "\u0661", "\uff11", "1\u0660", "-1", "1.0", "0x1", "1e3", "9" * 40]
)
def test_chunk_index_takes_ascii_digits_only(
    service: ServiceProcess, keypair: KeyPair, index: str
) -> None:
    headers = auth(keypair, "digits")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        session_id = new_session(http, headers)
        body = form_body(
            [
                form_part("upload_session_id", session_id.encode()),
                form_part("chunk_index", index.encode()),
                form_part("chunk", WAV_HEAD, file_name="blob"),
            ]
        )
        response = http.post(
            "/upload/chunk", content=body, headers={**headers, "Content-Type": FORM_CONTENT_TYPE}
        )
        assert_envelope(response, 422, "validation_error")
        assert "ASCII digits" in response.json()["message"]
        assert (
            http.get(f"/upload/{session_id}", headers=headers).json()["data"]["received_chunks"]
            == []
        )


def test_duplicated_form_fields_are_refused(service: ServiceProcess, keypair: KeyPair) -> None:
    headers = auth(keypair, "duplicates")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        mine, other = new_session(http, headers), new_session(http, headers)
        body = form_body(
            [
                form_part("upload_session_id", mine.encode()),
                form_part("chunk_index", b"0"),
                form_part("upload_session_id", other.encode()),
                form_part("chunk", WAV_HEAD, file_name="blob"),
            ]
        )
        response = http.post(
            "/upload/chunk", content=body, headers={**headers, "Content-Type": FORM_CONTENT_TYPE}
        )
        assert_envelope(response, 422, "validation_error")
        assert "more than once" in response.json()["message"]


# ---------------------------------------------------------------------- item 8: names
@pytest.mark.parametrize(
    "name",
    [
        "line\r\nbreak.wav",
        "tab\t.wav",
        "escape\x1b[31m.wav",
        "delete\x7f.wav",
        "c1\x85.wav",
        "evil\u202egnp.wav",
        "isolate\u2066x\u2069.wav",
        "mark\u200f.wav",
        "separator\u2028.wav",
    ],
)
def test_names_with_control_or_bidi_characters_are_refused(
    service: ServiceProcess, keypair: KeyPair, name: str
) -> None:
    with httpx.Client(base_url=service.url, timeout=60) as http:
        response = http.post(
            "/upload/init",
            json={"main_service_file_id": 1, "original_file_name": name},
            headers=auth(keypair, "names"),
        )
        body = assert_envelope(response, 422, "validation_error")
        assert body["error"]["details"]["character"].startswith("U+")
        assert "original_file_name" in body["message"]


def test_a_bare_extension_is_judged_by_the_allow_list(
    service: ServiceProcess, keypair: KeyPair, audio_wav: bytes
) -> None:
    headers = auth(keypair, "bare-extension")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        for refused in (".exe", ".", ".wav.exe"):
            response = http.post(
                "/upload/init",
                json={"main_service_file_id": 1, "original_file_name": refused},
                headers=headers,
            )
            assert_envelope(response, 422, "validation_error")
        session_id = new_session(http, headers, name=".wav")
        data = upload_and_complete(http, headers, session_id, audio_wav)
        assert data["key"].endswith(f"/{session_id}/audio.wav")


def upload_and_complete(
    http: httpx.Client, headers: dict[str, str], session_id: str, data: bytes
) -> dict[str, Any]:
    chunk = http.post(
        "/upload/chunk",
        data={"upload_session_id": session_id, "chunk_index": "0"},
        files={"chunk": ("blob", data)},
        headers=headers,
    )
    assert chunk.status_code == 200, chunk.text
    done = http.post(
        "/upload/complete",
        json={"upload_session_id": session_id, "total_chunks": 1, "main_service_file_id": 7},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    result: dict[str, Any] = done.json()["data"]
    return result


# ------------------------------------------------------------ item 9: owner key segment
def test_owners_never_share_a_key_prefix_and_old_sessions_keep_their_keys(
    service: ServiceProcess, keypair: KeyPair, audio_wav: bytes
) -> None:
    subs = [
        "tenant-a/alice",
        "tenant-b/alice",
        "\u30e6\u30fc\u30b6\u30fc",  # two subs in another script: both used to be "user"
        "\u30e6\u30fc\u30b6",
    ]
    owners = {}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        for sub in subs:
            headers = auth(keypair, sub)
            data = upload_and_complete(http, headers, new_session(http, headers), audio_wav)
            owners[sub] = data["key"].split("/")[1]
        assert len(set(owners.values())) == len(subs)
        assert owners["tenant-a/alice"] == owner_segment("tenant-a/alice")
        assert owners["tenant-a/alice"].startswith("tenant-a_alice-")
        assert owners[subs[2]].startswith("user-")
        assert owners[subs[3]].startswith("user-")

        # A session created before the rule has no stored key: it keeps the old one.
        headers = auth(keypair, "tenant-a/alice")
        old = new_session(http, headers)
        database = service.env["DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(database) as db:
            db.execute("UPDATE upload_sessions SET object_key = NULL WHERE id = ?", (old,))
        data = upload_and_complete(http, headers, old, audio_wav)
        assert data["key"] == legacy_object_key("uploads", "tenant-a/alice", 7, old, "voice.wav")
        assert data["key"].startswith("uploads/alice/7/")


# ------------------------------------------ item 12: the token before the JSON body
def test_init_checks_the_token_before_reading_the_body(
    service: ServiceProcess, keypair: KeyPair
) -> None:
    head = (
        "POST /upload/init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 60000\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    # A bad token: refused at once, though not one byte of the declared body was sent.
    status, body = raw_exchange(service.port, head.format(token="junk").encode())
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_token"
    # A good token and a body that stalls: cut off after JSON_IDLE_TIMEOUT_SECONDS (1 s).
    status, body = raw_exchange(
        service.port, head.format(token=keypair.token("slow")).encode() + b'{"main_'
    )
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"


# ------------------------------------------- item 10 and 12: probes, scrapes, labels
@pytest.fixture(scope="module")
def metrics_service(
    keypair: KeyPair, s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, int]]:
    root: Path = tmp_path_factory.mktemp("hostile-metrics")
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    metrics_port = free_port()
    env = service_env(
        keypair,
        s3_server.endpoint_url,
        bucket,
        {"database_url": f"sqlite+aiosqlite:///{root / 'sessions.db'}"},
        root / "staging",
        METRICS_PORT=str(metrics_port),
        METRICS_HOST="127.0.0.1",
    )
    process = ServiceProcess(env, root / "run").start()
    yield process, metrics_port
    process.stop()


def test_metrics_are_served_on_their_own_port_only(
    metrics_service: tuple[ServiceProcess, int],
) -> None:
    service, metrics_port = metrics_service
    assert_envelope(httpx.get(f"{service.url}/metrics"), 404, "not_found")
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert scraped.status_code == 200
    assert "upload_http_requests_total" in scraped.text
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/upload/init").status_code == 404
    # A client that sends junk on the metrics port gets the connection closed, nothing else.
    with pytest.raises(ConnectionError):
        raw_exchange(metrics_port, b"x" * 10_000)


def test_a_flood_of_probes_and_scrapes_costs_about_one_of_each(
    metrics_service: tuple[ServiceProcess, int], keypair: KeyPair
) -> None:
    service, metrics_port = metrics_service
    headers = auth(keypair, "probed")
    with httpx.Client(base_url=service.url, timeout=60) as http:
        # Something for the gauges to count: sessions with staged chunks.
        for _ in range(20):
            session_id = new_session(http, headers)
            for index in range(5):
                response = http.post(
                    "/upload/chunk",
                    data={"upload_session_id": session_id, "chunk_index": str(index)},
                    files={"chunk": ("blob", WAV_HEAD + bytes(1000))},
                    headers=headers,
                )
                assert response.status_code == 200

    async def flood() -> list[int]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            calls = [client.get(f"{service.url}/readyz") for _ in range(300)]
            calls += [client.get(f"http://127.0.0.1:{metrics_port}/metrics") for _ in range(300)]
            return [response.status_code for response in await asyncio.gather(*calls)]

    meter = CostMeter(pid_of(service)).start()
    statuses = asyncio.run(flood())
    cost = meter.stop()
    print(f"300 /readyz + 300 /metrics: {cost}")
    assert statuses == [200] * 600
    # Each answer served from the shared verdict/snapshot is cheap: a few ms at most on
    # average, where computing each (S3, database, staging tree) costs several times that.
    assert cost.cpu_seconds < 600 * 0.004, cost


def test_the_method_label_is_bounded(metrics_service: tuple[ServiceProcess, int]) -> None:
    service, metrics_port = metrics_service
    # uvicorn's httptools parser answers 400 to methods it does not know (BREW); the
    # WebDAV and other registered ones (PROPFIND, MKCALENDAR...) reach the app, and with
    # `--http h11` any token does.
    for method in ("PROPFIND", "MKCALENDAR", "PURGE", "BREW", "X" * 60):
        status, _ = raw_exchange(
            service.port, f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert status in (400, 404, 405), (method, status)
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in scraped.splitlines()
        if line.startswith("upload_http_requests_total{")
    }
    assert OTHER_METHOD in methods
    assert methods <= KNOWN_METHODS | {OTHER_METHOD}
