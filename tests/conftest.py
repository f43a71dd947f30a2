"""Shared fixtures: a real S3 server (moto, over HTTP), real databases (SQLite files and
the machine's PostgreSQL), a real key pair, and the app running its real lifespan."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from app.main import create_app
from app.settings import Settings
from tests.support import UploadApi

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("TEST_REQUIRE_POSTGRES", "") == "1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keypair() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def bucket(s3_server: LocalS3Server) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def s3(s3_server: LocalS3Server) -> Any:
    """A plain boto3 client to look at what really landed in the bucket."""
    return s3_server.client()


def _postgres_reachable() -> str | None:
    try:
        result = subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True, timeout=10
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "pg_isready is not available to check 127.0.0.1:5432"
    if result.returncode != 0:
        return f"no PostgreSQL reachable at 127.0.0.1:5432 ({result.stdout.decode().strip()})"
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Database settings: a SQLite file, or a fresh schema in the machine's PostgreSQL."""
    if request.param == "sqlite":
        yield {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"}
        return
    problem = _postgres_reachable()
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required here but {problem}")
        pytest.skip(f"PostgreSQL tests skipped: {problem}")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield {"database_url": POSTGRES_URL, "database_schema": schema}
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-c",
            f'DROP SCHEMA IF EXISTS "{schema}" CASCADE',
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def settings_factory(
    keypair: KeyPair,
    s3_server: LocalS3Server,
    bucket: str,
    database: dict[str, Any],
    tmp_path: Path,
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "main_service_jwt_public_key": keypair.public_pem,
            "expected_jwt_issuer": DEV_ISSUER,
            "expected_jwt_audience": DEV_AUDIENCE,
            "s3_bucket_name": bucket,
            "s3_endpoint_url": s3_server.endpoint_url,
            "s3_access_key": DEV_ACCESS_KEY,
            "s3_secret_key": DEV_SECRET_KEY,
            "local_temp_chunk_path": tmp_path / "staging",
            "log_level": "WARNING",
            **database,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started, and a client talking ASGI to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://upload.test", timeout=60
        ) as client:
            yield client


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as http:
        yield http


@pytest.fixture
def api(client: httpx.AsyncClient, keypair: KeyPair) -> UploadApi:
    return UploadApi(client, keypair)


@pytest.fixture(scope="session")
def audio_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About 3 s of real audio (a 44.1 kHz stereo WAV, ~530 KB), made with sox."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "44100",
            "-c",
            "2",
            "-b",
            "16",
            str(path),
            "synth",
            "3",
            "sine",
            "440",
            "sine",
            "660",
        ],
        check=True,
    )
    return path.read_bytes()
