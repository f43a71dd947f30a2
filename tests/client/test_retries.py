"""Retries against a real HTTP front server on loopback: a 429 with `Retry-After` is
waited out (measured at the server, not slept by the test); a 4xx that cannot succeed is
not retried; a 5xx is retried until the attempts run out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.client import AsyncUploader, RejectedError, RetryPolicy, UnavailableError
from app.dev.keys import KeyPair
from tests.client.conftest import sha256_of_file, sha256_of_object
from tests.http_front import HttpFront, Refusal
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def front(service: ServiceProcess) -> AsyncIterator[HttpFront]:
    server = await HttpFront(service.url).start()
    yield server
    await server.stop()


@pytest.fixture
def wav_file(audio_wav: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    return path


def uploader(front: HttpFront, keypair: KeyPair, tmp_path: Path, **options: Any) -> AsyncUploader:
    return AsyncUploader(
        keypair.token("user-1"),
        base_url=front.url,
        chunk_size=128 * 1024,
        parallel=1,
        state_dir=tmp_path / "state",
        **options,
    )


async def test_429_with_retry_after_is_waited_out_then_the_chunk_is_resent(
    front: HttpFront, wav_file: Path, keypair: KeyPair, s3: Any, bucket: str, tmp_path: Path
) -> None:
    front.refusals.append(Refusal("POST", "/upload/chunk", 429, {"Retry-After": "1"}))

    result = await uploader(front, keypair, tmp_path).upload(wav_file, 21)

    chunks = front.requests("POST", "/upload/chunk")
    total_chunks = -(-wav_file.stat().st_size // (128 * 1024))
    assert [c.status for c in chunks] == [429] + [200] * total_chunks
    waited_seconds = chunks[1].arrived_at - chunks[0].answered_at
    assert waited_seconds >= 1.0
    assert sha256_of_object(s3, bucket, result.key) == (
        sha256_of_file(wav_file),
        wav_file.stat().st_size,
    )


async def test_a_4xx_that_cannot_succeed_is_not_retried(
    front: HttpFront, keypair: KeyPair, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all")

    with pytest.raises(RejectedError) as raised:
        await uploader(front, keypair, tmp_path).upload(notes, 22)

    assert raised.value.status == 422
    assert raised.value.code == "validation_error"
    assert raised.value.exit_code == 4
    assert len(front.requests("POST", "/upload/init")) == 1


async def test_a_5xx_is_retried_until_the_attempts_run_out(
    front: HttpFront, wav_file: Path, keypair: KeyPair, tmp_path: Path
) -> None:
    front.refusals.append(Refusal("POST", "/upload/init", 503, times=100))
    fast = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.05)

    with pytest.raises(UnavailableError) as raised:
        await uploader(front, keypair, tmp_path, retry=fast).upload(wav_file, 23)

    assert raised.value.status == 503
    assert raised.value.exit_code == 6
    assert "3 attempts" in raised.value.message
    assert [s.status for s in front.requests("POST", "/upload/init")] == [503, 503, 503]
