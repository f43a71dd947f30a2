"""The real service in its own process (uvicorn, configured by environment variables)
with the moto S3 server and a SQLite file, plus a ~30 MB real audio file."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from tests.service_process import ServiceProcess


@pytest.fixture
def service_factory(
    keypair: KeyPair, s3_server: LocalS3Server, bucket: str, tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts the service with extra environment variables; every one started is
    stopped at the end (by PID)."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        workdir = tmp_path / f"service-{len(started)}"
        values = {
            "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": bucket,
            "S3_ENDPOINT_URL": s3_server.endpoint_url,
            "S3_ACCESS_KEY": DEV_ACCESS_KEY,
            "S3_SECRET_KEY": DEV_SECRET_KEY,
            "LOCAL_TEMP_CHUNK_PATH": str(workdir / "staging"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'sessions.db'}",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(env=values, log_path=workdir / "service.log")
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return service_factory()


@pytest.fixture(scope="session")
def big_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """180 s of 44.1 kHz 16-bit stereo sine: a real WAV of about 30 MiB, made by sox."""
    path = tmp_path_factory.mktemp("big-audio") / "concert.wav"
    shape = ["-r", "44100", "-c", "2", "-b", "16"]
    subprocess.run(["sox", "-n", *shape, str(path), "synth", "180", "sine", "440"], check=True)
    return path


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_object(s3: Any, bucket: str, key: str) -> tuple[str, int]:
    """SHA-256 and size of what is really stored, read back from S3."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for block in body.iter_chunks(1 << 20):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size
