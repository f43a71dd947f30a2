"""A real service process and a real S3 server for the tus and IETF front-door tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from tests.audio_factory import make_audio
from tests.service_process import ServiceProcess, settings_env

MiB = 1024 * 1024


@dataclass
class TusService:
    process: ServiceProcess
    settings: Settings
    keypair: KeyPair
    s3: Any

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def endpoint(self) -> str:
        return f"{self.process.url}/files/"

    def auth(self, sub: str = "user-1", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keypair.token(sub, **claims)}"}

    def stored_keys(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.settings.s3_bucket_name)
        return [item["Key"] for item in listed.get("Contents", [])]

    def stored(self, key: str) -> bytes:
        body = self.s3.get_object(Bucket=self.settings.s3_bucket_name, Key=key)["Body"]
        return bytes(body.read())


@pytest.fixture
def tus_service(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, tmp_path: Path
) -> Iterator[TusService]:
    # Parts of 5 MiB (S3's least) so a few-MiB file already spans several staged pieces.
    settings = settings_factory(s3_part_size_bytes=5 * MiB, upload_lease_seconds=4)
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log").start()
    yield TusService(process, settings, keypair, s3)
    process.stop()


@pytest.fixture(scope="session")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 12 MB of real audio (70 s of 44.1 kHz stereo WAV)."""
    path = tmp_path_factory.mktemp("tus") / "interview.wav"
    make_audio("wav", path, 70, channels=2)
    return path


@pytest.fixture(scope="session")
def png_as_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.audio_factory import make_png

    folder = tmp_path_factory.mktemp("png")
    path = folder / "cover.mp3"
    path.write_bytes(make_png(folder / "cover.png").read_bytes())
    return path
