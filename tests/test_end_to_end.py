"""The issue's done-when, on a real server process: a 30 MB real audio file in 1 MiB
chunks, out of order, 4 at a time, becomes an S3 object with the same SHA-256 and the
staging directory is empty afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from tests.audio_factory import make_audio
from tests.service_process import ServiceProcess, settings_env

MiB = 1024 * 1024
pytestmark = pytest.mark.slow


@pytest.fixture
def service(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[ServiceProcess, Settings]]:
    settings = settings_factory()
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log").start()
    yield process, settings
    process.stop()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "podcast.wav"
    # 170 s of 44.1 kHz stereo 16-bit: about 30 MB of real audio.
    make_audio("wav", path, 170, channels=2)
    return path


async def test_30_mb_out_of_order_4_parallel(
    service: tuple[ServiceProcess, Settings], recording: Path, keypair: KeyPair, s3: Any
) -> None:
    process, settings = service
    data = recording.read_bytes()
    assert len(data) > 29_000_000
    headers = {"Authorization": f"Bearer {keypair.token('podcaster')}"}
    chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=120) as http:
        init = await http.post(
            "/upload/init",
            json={
                "main_service_file_id": 77,
                "original_file_name": "episode 1.wav",
                "total_size": len(data),
                "total_chunks": len(chunks),
            },
        )
        assert init.status_code == 200, init.text
        session_id = init.json()["data"]["upload_session_id"]
        order = list(range(len(chunks)))
        random.Random(3).shuffle(order)
        slots = asyncio.Semaphore(4)

        async def send(index: int) -> None:
            async with slots:
                response = await http.post(
                    "/upload/chunk",
                    data={
                        "upload_session_id": session_id,
                        "chunk_index": str(index),
                        "chunk_sha256": hashlib.sha256(chunks[index]).hexdigest(),
                    },
                    files={"chunk": ("blob", chunks[index])},
                )
                assert response.status_code == 200, response.text

        await asyncio.gather(*(send(i) for i in order))
        complete = await http.post(
            "/upload/complete",
            json={
                "upload_session_id": session_id,
                "total_chunks": len(chunks),
                "main_service_file_id": 77,
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        assert complete.status_code == 200, complete.text
        result = complete.json()["data"]
    stored = s3.get_object(Bucket=settings.s3_bucket_name, Key=result["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    assert result["size"] == len(data) and result["content_type"] == "audio/wav"
    assert result["duration_seconds"] == pytest.approx(170, rel=0.01)
    leftovers = [p for p in (settings.local_temp_chunk_path / "sessions").rglob("*")]
    leftovers += list((settings.local_temp_chunk_path / "incoming").rglob("*"))
    assert leftovers == []
