"""A completion that loses its work lease before S3's commit does not commit.

No database write can fence CompleteMultipartUpload, so the completion renews its lease
right before it (`HeldLease.confirm`). Here another holder takes the lapsed lease while
the completion runs (as the janitor's release or a retry on another replica would): the
loser must store nothing, leave the eager upload and its part rows to the new holder,
and answer 409; once the lease is free again, a retry stores exactly the file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, BinaryIO

import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from app.storage.s3 import S3MultipartStore
from app.uploads import leasing
from app.uploads.models import SessionState, utc_now
from app.uploads.ports import Lease, PartBody
from app.uploads.service import UploadService
from tests.audio_factory import make_audio
from tests.support import UploadApi, assert_error, sha256, split
from tests.uploads.test_eager_flush import (
    PART_SIZE,
    flushed_parts,
    open_uploads,
    service,
    spy_on_finish,
    stored_bytes,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About 11 MB of real audio: two full 5 MiB parts and a tail."""
    path = tmp_path_factory.mktemp("fencing") / "take.wav"
    return make_audio("wav", path, 62, sample_rate=44100, channels=2).read_bytes()


@asynccontextmanager
async def sent(
    settings: Settings, keypair: KeyPair, wav: bytes
) -> AsyncIterator[tuple[UploadApi, UploadService, str, list[bytes]]]:
    """A running service holding a session with every chunk of `wav` received."""
    chunks = split(wav, 3 * MiB)
    async with service(settings) as (http, uploads):
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        yield api, uploads, session_id, chunks


class Intruder:
    """The service's own S3 store; on the first call of `method` another holder takes
    the session's work lease, as if the completion's lease had lapsed. With `fail`, that
    call then fails, as S3 fails a part for an upload the janitor aborted meanwhile."""

    def __init__(
        self, inner: S3MultipartStore, uploads: UploadService, method: str, *, fail: bool
    ) -> None:
        self.inner = inner
        self.uploads = uploads
        self.method = method
        self.fail = fail
        self.session_id = ""
        self.taking = False  # parts go up in parallel: only the first call takes it
        self.lease: Lease | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _take_lease(self, name: str) -> None:
        if name != self.method or self.taking:
            return
        self.taking = True
        lapsed = utc_now() + timedelta(seconds=self.uploads.policy.completion_lease_seconds + 60)
        self.lease = await self.uploads.leases.acquire(
            self.session_id, leasing.WORK, holder="intruder", now=lapsed, ttl_seconds=60
        )
        assert self.lease is not None
        if self.fail:
            raise ConnectionResetError("the upload's part failed")

    async def start(self, key: str, *, content_type: str, metadata: dict[str, str]) -> str:
        upload_id = await self.inner.start(key, content_type=content_type, metadata=metadata)
        await self._take_lease("start")  # after: the loser's own upload exists
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes | BinaryIO | PartBody
    ) -> str:
        await self._take_lease("upload_part")
        return await self.inner.upload_part(key, upload_id, part_number, data)

    async def list_parts(self, key: str, upload_id: str) -> list[int]:
        await self._take_lease("list_parts")
        return await self.inner.list_parts(key, upload_id)

    async def let_go(self) -> None:
        assert self.lease is not None, "the lease was never taken"
        await self.uploads.leases.release(self.lease, now=utc_now())


def install(
    uploads: UploadService, method: str, session_id: str, *, fail: bool = False
) -> Intruder:
    intruder = Intruder(uploads.objects, uploads, method, fail=fail)  # type: ignore[arg-type]
    intruder.session_id = session_id
    uploads.objects = intruder
    if uploads.eager is not None:
        uploads.eager.objects = intruder
    return intruder


@pytest.mark.parametrize(
    ("method", "fail"),
    [
        ("start", False),  # before the row names the loser's upload
        ("upload_part", False),  # found at the check right before the commit
        ("upload_part", True),  # a part fails after the take-over
    ],
)
async def test_plain_path_loser_commits_nothing_and_a_retry_stores_the_file(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    wav: bytes,
    method: str,
    fail: bool,
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=False)
    bucket = settings.s3_bucket_name
    async with sent(settings, keypair, wav) as (api, uploads, session_id, chunks):
        intruder = install(uploads, method, session_id, fail=fail)

        lost = await api.complete(session_id, len(chunks))
        assert_error(lost, 409, "completion_in_progress")
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        assert open_uploads(s3, bucket) == []  # the loser's own upload, aborted
        # The session is the new holder's: still completing.
        row = await uploads.store.get(session_id)
        assert row is not None and row.state is SessionState.COMPLETING
        if method == "start":
            assert row.multipart_upload_id is None  # the loser could not name its upload

        await intruder.let_go()
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert data["sha256"] == sha256(wav)
    assert stored_bytes(s3, bucket, data["key"]) == wav
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize(
    ("method", "fail"),
    [
        ("list_parts", False),  # found at the check right before the commit
        ("upload_part", True),  # the tail's part fails after the take-over
    ],
)
async def test_eager_loser_leaves_the_upload_and_its_rows_to_the_new_holder(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    s3: Any,
    wav: bytes,
    method: str,
    fail: bool,
) -> None:
    settings = settings_factory(s3_part_size_bytes=PART_SIZE, eager_flush=True)
    bucket = settings.s3_bucket_name
    async with sent(settings, keypair, wav) as (api, uploads, session_id, chunks):
        await flushed_parts(s3, bucket, len(wav) // PART_SIZE)
        [upload] = open_uploads(s3, bucket)
        # The eager path sends the tail, then lists the upload's parts right before its
        # commit (the Ceph rule).
        intruder = install(uploads, method, session_id, fail=fail)
        results = spy_on_finish(uploads)

        lost = await api.complete(session_id, len(chunks))
        assert_error(lost, 409, "completion_in_progress")
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        # Not aborted by the loser: it is the new holder's to finish.
        assert [u["UploadId"] for u in open_uploads(s3, bucket)] == [upload["UploadId"]]
        listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        assert len(listed["Parts"]) == len(wav) // PART_SIZE + (0 if fail else 1)

        await intruder.let_go()
        response = await api.complete(session_id, len(chunks))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    # The retry finished the same eager upload from the part rows the loser left: only
    # the tail was sent again (all parts, had the rows been cleared).
    assert results[-1] is not None
    assert results[-1].parts_sent_at_complete == 1
    assert data["key"] == upload["Key"]
    assert data["sha256"] == sha256(wav)
    assert stored_bytes(s3, bucket, data["key"]) == wav
    assert open_uploads(s3, bucket) == []
