"""Hostile input at the edge (issue 12), sent over HTTP to a real service process.

Each test sends what an attacker holding one valid token would send and asserts the
outcome a user would notice: a clear 4xx in the envelope, never a 5xx, and, where the
point is cost, what the request cost the service process (CPU-seconds and resident
memory read from /proc, loose bounds; never wall-clock timings).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from tests.hostile import FORM_CONTENT_TYPE, CostMeter, form_body, form_part, streamed_form
from tests.processes import ServiceProcess, service_env

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
    )
    process = ServiceProcess(env, root / "run").start()
    yield process
    process.stop()


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
