"""The HTTP edge: CORS preflights, forwarded headers from trusted proxies only, and the
JSON access log (one `http.request` event per request, session bound, no secrets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server, free_port
from app.main import create_app
from app.settings import Settings
from tests.support import UploadApi, split

ORIGIN = "https://app.example.com"


@asynccontextmanager
async def running_from(app: Any, client_ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, reached by a client at `client_ip` (the proxy's address,
    as the server would see the TCP peer)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 41000))
        async with httpx.AsyncClient(transport=transport, base_url="http://upload.test") as client:
            yield client


def access_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "http.request":
                events.append(event)
    return events


# ------------------------------------------------------------------------------ CORS
async def test_cors_preflight_allows_the_configured_origin(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(cors_allow_origins=f"{ORIGIN}, https://other.example"))
    async with running_from(app, "127.0.0.1") as client:
        preflight = await client.options(
            "/upload/chunk",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "DELETE" in preflight.headers["access-control-allow-methods"]
        allowed_headers = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers
        assert "access-control-allow-credentials" not in preflight.headers

        simple = await client.get("/healthz", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()

        refused = await client.options(
            "/upload/chunk",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers


async def test_cors_is_off_without_origins(settings_factory: Callable[..., Settings]) -> None:
    async with running_from(create_app(settings_factory()), "127.0.0.1") as client:
        response = await client.get("/healthz", headers={"Origin": ORIGIN})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = await client.options(
            "/upload/init", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


# ------------------------------------------------------------------- forwarded headers
@pytest.mark.parametrize(
    ("peer", "trusted", "expected_ip", "expected_scheme"),
    [
        ("127.0.0.1", "127.0.0.1", "203.0.113.7", "https"),
        ("10.1.2.3", "10.0.0.0/8", "203.0.113.7", "https"),
        ("198.51.100.20", "127.0.0.1", "198.51.100.20", "http"),
    ],
    ids=["trusted-default", "trusted-network", "untrusted"],
)
async def test_forwarded_client_is_used_only_from_trusted_proxies(
    settings_factory: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    peer: str,
    trusted: str,
    expected_ip: str,
    expected_scheme: str,
) -> None:
    settings = settings_factory(forwarded_allow_ips=trusted, log_level="INFO")
    async with running_from(create_app(settings), peer) as client:
        capsys.readouterr()
        response = await client.get(
            "/nope",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        )
        assert response.status_code == 404
    [event] = access_events(capsys.readouterr().err)
    assert event["client_ip"] == expected_ip
    assert event["scheme"] == expected_scheme


@pytest.mark.slow
@pytest.mark.parametrize(
    ("uvicorn_flags", "trusted", "expected_ip"),
    [
        # uvicorn told not to handle proxy headers: the app still does, for trusted peers.
        (["--no-proxy-headers"], "127.0.0.1", "203.0.113.7"),
        # uvicorn's defaults (it reads FORWARDED_ALLOW_IPS too): an untrusted peer is ignored.
        ([], "10.9.9.9", "127.0.0.1"),
    ],
    ids=["trusted-without-uvicorn-proxy-headers", "untrusted-with-uvicorn-defaults"],
)
def test_a_real_uvicorn_process_trusts_only_configured_proxies(
    s3_server: LocalS3Server,
    bucket: str,
    keypair: KeyPair,
    tmp_path: Path,
    uvicorn_flags: list[str],
    trusted: str,
    expected_ip: str,
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k.isupper() and not k.startswith("S3_")},
        "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
        "EXPECTED_JWT_ISSUER": DEV_ISSUER,
        "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
        "S3_BUCKET_NAME": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "S3_ACCESS_KEY": DEV_ACCESS_KEY,
        "S3_SECRET_KEY": DEV_SECRET_KEY,
        "LOCAL_TEMP_CHUNK_PATH": str(tmp_path / "staging"),
        "LOG_LEVEL": "INFO",
        "FORWARDED_ALLOW_IPS": trusted,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:app", *uvicorn_flags]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    stderr_path = tmp_path / "server.log"
    with stderr_path.open("wb") as stderr:
        server = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, stderr_path.read_text()
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the service did not start in time"
                time.sleep(0.1)
            response = httpx.get(
                f"{base_url}/nope",
                headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
            )
            assert response.status_code == 404
        finally:
            server.terminate()
            server.wait(timeout=30)
    log = stderr_path.read_text()
    [event] = [e for e in access_events(log) if e["path"] == "/nope"]
    assert event["client_ip"] == expected_ip
    assert event["scheme"] == ("https" if expected_ip == "203.0.113.7" else "http")
    # uvicorn's own plain-text access line is quieted in favour of ours.
    assert '"GET /nope HTTP/1.1"' not in log


# ------------------------------------------------------------------------- access log
async def test_one_access_event_per_request_with_session_and_no_secrets(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(settings_factory(log_level="INFO"))
    async with running_from(app, "127.0.0.1") as client:
        api = UploadApi(client, keypair)
        token = api.headers()["Authorization"].removeprefix("Bearer ")
        session_id = await api.session()
        chunks = split(audio_wav, 300_000)
        capsys.readouterr()
        await api.send_all(session_id, chunks)
        assert (await api.complete(session_id, len(chunks))).status_code == 200
        assert (await api.status(session_id)).status_code == 200
        stderr = capsys.readouterr().err

    events = access_events(stderr)
    assert [(e["method"], e["route"], e["status"]) for e in events] == [
        *[("POST", "/upload/chunk", 200)] * len(chunks),
        ("POST", "/upload/complete", 200),
        ("GET", "/upload/{upload_session_id}", 200),
    ]
    for event in events:
        assert event["session_id"] == session_id
        assert event["level"] == "info"
        assert len(event["request_id"]) == 32
        assert event["duration_ms"] >= 0
        assert event["client_ip"] == "127.0.0.1"
    chunk_events = events[: len(chunks)]
    assert sum(e["bytes"] for e in chunk_events) > len(audio_wav)
    # Domain events of the same request carry the same ids.
    stored = [json.loads(line) for line in stderr.splitlines() if "upload.chunk_stored" in line]
    assert {e["request_id"] for e in stored} == {e["request_id"] for e in chunk_events}
    assert token not in stderr
    assert "Bearer" not in stderr


async def test_probes_log_at_debug_only(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_factory(log_level="INFO"))
    async with running_from(app, "127.0.0.1") as client:
        capsys.readouterr()
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/upload/nope")).status_code == 401
        events = access_events(capsys.readouterr().err)
    assert [e["route"] for e in events] == ["/upload/{upload_session_id}"], events


async def test_requests_do_not_look_up_opentelemetry_providers(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI's native telemetry is off (app.main): with it on, every request asks
    OpenTelemetry for its global providers, which reads the environment each time."""
    from opentelemetry import _logs, metrics, trace

    lookups: list[str] = []
    for module, getter in (
        (trace, "get_tracer_provider"),
        (metrics, "get_meter_provider"),
        (_logs, "get_logger_provider"),
    ):
        real = getattr(module, getter)

        def counted(*args: Any, _real: Any = real, _name: str = getter) -> Any:
            lookups.append(_name)
            return _real(*args)

        monkeypatch.setattr(module, getter, counted)

    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    assert lookups == []
