"""Parts sent straight from disk staging (`StagedRange`): the bytes each send attempt reads
are the ones hashed, a retry after a connection cut mid-part stores exactly the file, and
a part in flight no longer costs a part-sized buffer."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.dev.s3server import LocalS3Server
from app.settings import Settings
from app.storage.s3 import S3MultipartStore
from app.storage.s3 import _KnownPayloadS3SigV4Auth as KnownPayloadSigner
from app.storage.staging import AssembledReader, ConcatenatedReader, DiskStaging, StagedRange
from app.uploads.assembly import upload_in_parts
from app.uploads.models import StoredChunk
from tests.tcp_proxy import CuttableProxy

MiB = 1024 * 1024
PART_SIZE = 5 * MiB
# The S3 tests need settings, not a database: SQLite's are the cheapest.
only_sqlite_settings = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def staging(tmp_path: Path) -> DiskStaging:
    staging = DiskStaging(tmp_path / "staging")
    staging.prepare()
    return staging


async def stage(
    staging: DiskStaging, session_id: str, data: bytes, sizes: Sequence[int]
) -> list[StoredChunk]:
    """`data` staged as chunks of `sizes` (the rest in a last one), as uploads stage them."""
    chunks: list[StoredChunk] = []
    at = 0
    for index, size in enumerate([*sizes, len(data) - sum(sizes)]):
        piece = data[at : at + size]
        at += size
        writer = staging.new_writer(max_bytes=len(piece) + 1)
        await writer.write(piece)
        staged = await writer.finish()
        name = await staging.adopt(session_id, staged, index)
        chunks.append(StoredChunk(index, len(piece), staged.sha256, name))
    return chunks


def cut(
    staging: DiskStaging, session_id: str, chunks: list[StoredChunk], start: int, size: int
) -> StagedRange:
    with staging.open_assembled(session_id, chunks) as stream:
        assert isinstance(stream, AssembledReader)
        return stream.staged_range(start, size)


async def send_staged(
    objects: S3MultipartStore,
    staging: DiskStaging,
    session_id: str,
    chunks: list[StoredChunk],
    part_size: int,
    concurrency: int,
    expected_sha256: str | None,
) -> Any:
    """The staged chunks sent as the object `streamed/<session id>`, as completion does."""
    return await upload_in_parts(
        objects,
        lambda: staging.open_assembled(session_id, chunks),
        key=f"streamed/{session_id}",
        content_type="application/octet-stream",
        metadata={},
        part_size_bytes=part_size,
        concurrency=concurrency,
        expected_sha256=expected_sha256,
    )


async def test_every_reader_of_a_range_reads_the_hashed_bytes_on_its_own(
    staging: DiskStaging,
) -> None:
    session_id = str(uuid.uuid4())
    data = os.urandom(3 * MiB + 17)
    chunks = await stage(staging, session_id, data, [MiB + 5, 1, MiB])
    start, size = MiB - 3, 2 * MiB
    part = cut(staging, session_id, chunks, start, size)
    assert isinstance(part, StagedRange)
    assert part.size_bytes == size
    hashed = hashlib.sha256()
    part.hash_into(hashed)
    assert hashed.digest() == hashlib.sha256(data[start : start + size]).digest()
    with pytest.raises(io.UnsupportedOperation, match="open_reader"):
        part.read(10)  # the shared object is never read: botocore only sees readers

    # An abandoned attempt's reader, read halfway, and a retry's: neither moves the other.
    abandoned, retry = part.open_reader(), part.open_reader()
    abandoned.read(MiB)
    retried = bytearray()
    while piece := retry.read(300_000):
        retried += piece
        abandoned.read(100_000)
    assert bytes(retried) == data[start : start + size]
    retry.seek(0)
    assert retry.read(5) == data[start : start + 5]  # botocore rewinds after SigV4's hash
    # A read of everything crosses the staged files' boundaries (the range spans three).
    retry.seek(0)
    assert retry.read() == data[start : start + size]
    retry.seek(7)
    assert retry.readall() == data[start + 7 : start + size]
    assert io.BufferedReader(part.open_reader()).read() == data[start : start + size]

    part.close()
    with pytest.raises(ValueError, match="closed"):
        retry.read(1)
    with pytest.raises(ValueError, match="closed"):
        part.open_reader()

    # The end of the stream clips the range; a file replaced under it fails the read.
    tail = cut(staging, session_id, chunks, len(data) - 10, PART_SIZE)
    assert tail.size_bytes == 10
    middle = cut(staging, session_id, chunks, MiB, 10)
    assert middle.intact()
    path = staging.session_dir(session_id) / chunks[0].file_name
    replacement = path.with_suffix(".new")
    replacement.write_bytes(path.read_bytes())
    os.replace(replacement, path)
    with pytest.raises(OSError, match="changed since"):
        middle.open_reader().read(10)
    with pytest.raises(OSError, match="changed since"):
        middle.hash_into(hashlib.sha256())
    # What eager flush asks before calling a failed send a storage failure.
    assert not middle.intact()
    path.unlink()
    assert not middle.intact()


@pytest.fixture
async def proxy(s3_server: LocalS3Server) -> AsyncIterator[CuttableProxy]:
    proxy = await CuttableProxy("127.0.0.1", s3_server.port, watch=[b"partNumber="]).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def objects(settings_factory: Any, proxy: CuttableProxy) -> AsyncIterator[S3MultipartStore]:
    settings: Settings = settings_factory(s3_endpoint_url=proxy.url)
    store = S3MultipartStore(settings)
    await store.open()
    yield store
    await store.close()


@only_sqlite_settings
async def test_a_part_resent_after_a_cut_mid_part_stores_exactly_the_file(
    staging: DiskStaging, objects: S3MultipartStore, proxy: CuttableProxy, s3: Any
) -> None:
    """The connection drops in the middle of part 2 (its body half sent, worker threads
    reading it): botocore's retry sends it again through a new reader, and the object
    and its SHA-256 are exactly the file's."""
    session_id = str(uuid.uuid4())
    data = os.urandom(2 * PART_SIZE + 3 * MiB)
    chunks = await stage(staging, session_id, data, [3 * MiB, 3 * MiB + 1, 2 * MiB])
    proxy.drop_once_after_upstream_bytes = PART_SIZE + PART_SIZE // 2
    assembled = await send_staged(
        objects, staging, session_id, chunks, PART_SIZE, 1, hashlib.sha256(data).hexdigest()
    )
    assert proxy.drops == 1
    assert proxy.seen[b"partNumber="] == 4  # three parts, one of them twice
    assert assembled.size_bytes == len(data)
    assert assembled.sha256 == hashlib.sha256(data).hexdigest()
    stored = s3.get_object(Bucket=objects.bucket, Key=f"streamed/{session_id}")["Body"].read()
    assert stored == data


@only_sqlite_settings
async def test_parts_in_flight_hold_no_part_sized_buffers(
    staging: DiskStaging, objects: S3MultipartStore, s3: Any
) -> None:
    """Four 8 MiB parts in flight at once: the old path held each in an 8 MiB buffer
    (peak over 32 MiB of Python allocations); streamed, the peak is a few 256 KiB reads
    and SigV4's 1 MiB ones. Bound: less than one part."""
    part_size = 8 * MiB
    session_id = str(uuid.uuid4())
    data = os.urandom(4 * part_size)
    chunks = await stage(staging, session_id, data, [16 * MiB])
    tracemalloc.start()
    try:
        assembled = await send_staged(objects, staging, session_id, chunks, part_size, 4, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert assembled.size_bytes == len(data)
    assert peak < part_size, f"{peak / MiB:.1f} MiB at the peak"
    stored = s3.get_object(Bucket=objects.bucket, Key=f"streamed/{session_id}")["Body"].read()
    assert stored == data


async def test_a_range_knows_its_own_sha256_only_when_it_is_one_whole_chunk_or_was_hashed(
    staging: DiskStaging,
) -> None:
    """SigV4 over plain http signs each part's SHA-256: a part that is one whole staged
    chunk takes the chunk writer's hash, one across chunks gets it from the pass that
    feeds the file's hash (asked for), and nothing else claims one."""
    session_id = str(uuid.uuid4())
    data = os.urandom(3 * MiB)
    chunks = await stage(staging, session_id, data, [MiB, MiB])
    whole = cut(staging, session_id, chunks, MiB, MiB)
    assert (
        whole.payload_sha256 == chunks[1].sha256 == hashlib.sha256(data[MiB : 2 * MiB]).hexdigest()
    )
    assert whole.open_reader().payload_sha256 == chunks[1].sha256  # what the signer sees
    for start, size in ((MiB, MiB - 1), (MiB + 1, MiB - 1), (MiB // 2, MiB)):
        piece = cut(staging, session_id, chunks, start, size)
        assert piece.payload_sha256 is None
        piece.hash_into(hashlib.sha256())  # the file's hash alone: nothing more
        assert piece.payload_sha256 is None
        piece.hash_into(hashlib.sha256(), payload_sha256=True)
        assert piece.payload_sha256 == hashlib.sha256(data[start : start + size]).hexdigest()
        assert piece.open_reader().payload_sha256 == piece.payload_sha256
    # Without the chunks' hashes (a stream that was not given them) a chunk is not known.
    with ConcatenatedReader(
        [(staging.session_dir(session_id) / c.file_name, c.size_bytes) for c in chunks]
    ) as raw:
        assert raw.staged_range(MiB, MiB).payload_sha256 is None


@only_sqlite_settings
@pytest.mark.parametrize("sign", ["auto", "never"])
async def test_each_part_is_signed_with_the_sha256_of_the_bytes_it_sends(
    staging: DiskStaging,
    settings_factory: Any,
    s3_server: LocalS3Server,
    s3: Any,
    sign: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over plain http every UploadPart carries its body's SHA-256 in the signed
    X-Amz-Content-SHA256, which AWS, MinIO and Ceph check against the body: a part that is
    one chunk (part 1: the chunk writer's hash), one across chunks and the tail (parts 2
    and 3: hashed in the worker thread's pass), each signed with the hash the flush knew,
    not read and hashed again by botocore. `S3_SIGN_PAYLOAD=never`: unsigned, and no part
    is hashed for it. A body that is not a staged range keeps botocore's hash."""
    settings: Settings = settings_factory(
        s3_endpoint_url=s3_server.endpoint_url, s3_sign_payload=sign
    )
    objects = S3MultipartStore(settings)
    await objects.open()
    sent: dict[int, bytes] = {}

    def record(request: Any, **_: Any) -> None:
        number = int(request.url.split("partNumber=")[1].split("&")[0])
        sent[number] = request.headers["X-Amz-Content-SHA256"]

    objects.client.meta.events.register("before-send.s3.UploadPart", record)
    # Which signatures used the part's known hash: botocore's own (a second read and
    # hash on the event loop) would give the same header, so the header alone cannot tell.
    known: list[str] = []
    payload = KnownPayloadSigner.payload

    def spy(signer: Any, request: Any) -> str:
        value: str = payload(signer, request)
        if value == getattr(request.body, "payload_sha256", None):
            known.append(value)
        return value

    monkeypatch.setattr(KnownPayloadSigner, "payload", spy)
    try:
        assert objects.signs_payload is (sign == "auto")
        session_id = str(uuid.uuid4())
        data = os.urandom(2 * PART_SIZE + MiB)
        chunks = await stage(staging, session_id, data, [PART_SIZE, 2 * MiB])
        assembled = await send_staged(
            objects, staging, session_id, chunks, PART_SIZE, 2, hashlib.sha256(data).hexdigest()
        )
        assert assembled.sha256 == hashlib.sha256(data).hexdigest()
        parts = [data[at : at + PART_SIZE] for at in range(0, len(data), PART_SIZE)]
        if sign == "auto":
            assert sent == {
                n: hashlib.sha256(p).hexdigest().encode() for n, p in enumerate(parts, 1)
            }
            assert len(known) == 3
        else:
            assert sent == {n: b"UNSIGNED-PAYLOAD" for n in (1, 2, 3)}
            assert known == []
        stored = s3.get_object(Bucket=objects.bucket, Key=f"streamed/{session_id}")["Body"].read()
        assert stored == data

        # A buffered part (S3 staging's path) is hashed by botocore, as before.
        key = f"buffered/{session_id}"
        upload_id = await objects.start(key, content_type="application/octet-stream", metadata={})
        sent.clear()
        body = os.urandom(MiB)
        await objects.upload_part(key, upload_id, 1, io.BytesIO(body))
        expected = (
            hashlib.sha256(body).hexdigest().encode() if sign == "auto" else b"UNSIGNED-PAYLOAD"
        )
        assert sent == {1: expected}
        await objects.abort(key, upload_id)
    finally:
        await objects.close()
