"""The Ceph RGW rule: CompleteMultipartUpload must list every part the upload holds (RGW
answers InvalidPart otherwise; moto and AWS do not check, so the test lists the parts in
S3 right before each commit). A file re-sent shorter after its parts were flushed, and a
part S3 holds with no row (a crash between S3's answer and the row), both leave parts
past the new end: the eager upload is dropped and the plain path stores the file."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from app.storage.s3 import S3MultipartStore
from tests.support import UploadApi, sha256, split
from tests.uploads.test_eager_flush import (
    PART_SIZE,
    flushed_parts,
    open_uploads,
    service,
    stored_bytes,
)

MiB = 1024 * 1024


def _wav(path: Path, seconds: int) -> bytes:
    subprocess.run(
        [
            *("sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(path)),
            *("synth", str(seconds), "pinknoise"),
        ],
        check=True,
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A long file (four full 5 MiB parts and a tail) and a shorter one (two and a tail)."""
    folder = tmp_path_factory.mktemp("ceph")
    return _wav(folder / "long.wav", 125), _wav(folder / "short.wav", 62)


class CommitWatcher:
    """The service's own S3 store, with a look at the upload's parts in S3 before each
    commit: (part numbers S3 holds, number of parts the commit lists)."""

    def __init__(self, inner: S3MultipartStore, s3: Any) -> None:
        self.inner = inner
        self.s3 = s3
        self.commits: list[tuple[list[int], int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def finish(self, key: str, upload_id: str, etags: Sequence[str]) -> None:
        listed = await asyncio.to_thread(
            self.s3.list_parts, Bucket=self.inner.bucket, Key=key, UploadId=upload_id
        )
        held = sorted(int(part["PartNumber"]) for part in listed.get("Parts", []))
        self.commits.append((held, len(etags)))
        await self.inner.finish(key, upload_id, etags)


async def test_a_file_resent_shorter_leaves_no_part_unlisted_at_the_commit(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    wavs: tuple[bytes, bytes],
) -> None:
    long, short = wavs
    first, second = split(long, PART_SIZE), split(short, len(short) // 5 + 1)
    assert len(first) == len(second) == 5
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    async with service(settings) as (http, uploads):
        watcher = CommitWatcher(uploads.objects, s3)  # type: ignore[arg-type]
        uploads.objects = watcher
        assert uploads.eager is not None
        uploads.eager.objects = watcher
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, first)
        await flushed_parts(s3, bucket, 4)
        for index, data in enumerate(second):  # every chunk again, the file now shorter
            response = await api.chunk(session_id, index, data)
            assert response.status_code == 200, response.text
        response = await api.complete(session_id, len(second))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["sha256"] == sha256(short)
    assert stored_bytes(s3, bucket, data["key"]) == short
    assert watcher.commits, "no commit was seen"
    for held, listed in watcher.commits:
        assert held == list(range(1, listed + 1))
    assert open_uploads(s3, bucket) == []


async def test_a_part_s3_holds_without_a_row_is_not_left_unlisted(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    wavs: tuple[bytes, bytes],
) -> None:
    _, short = wavs
    chunks = split(short, 3 * MiB)
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    async with service(settings) as (http, uploads):
        watcher = CommitWatcher(uploads.objects, s3)  # type: ignore[arg-type]
        uploads.objects = watcher
        assert uploads.eager is not None
        uploads.eager.objects = watcher
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        await flushed_parts(s3, bucket, 2)
        [upload] = open_uploads(s3, bucket)
        # What a flusher killed after S3's answer but before its row leaves behind.
        s3.upload_part(
            Bucket=bucket,
            Key=upload["Key"],
            UploadId=upload["UploadId"],
            PartNumber=7,
            Body=b"x" * (5 * MiB),
        )
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert stored_bytes(s3, bucket, data["key"]) == short
    for held, listed in watcher.commits:
        assert held == list(range(1, listed + 1))
    assert open_uploads(s3, bucket) == []
