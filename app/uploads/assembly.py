"""Streams staged chunks, in order, into one multipart object.

Each part is hashed once (SHA-256, in a worker thread) and sent; at most `concurrency`
parts are in flight at any time. From disk staging a part is sent straight from the
staged files (`cut_part`: a `PartBody`, read in 256 KiB pieces as it goes out, so a part
in flight holds no 8 MiB buffer; the hash reads it once more from the page cache); from
staging that cannot (S3), it is read into one buffer that is hashed and sent. On any
failure the multipart upload is aborted, so a failed completion leaves nothing in the
bucket.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import structlog

from app.errors import ChecksumMismatch, ServiceError
from app.uploads import buffer_budget
from app.uploads.ports import Hasher, MultipartObjectStore, PartBody, RangedStream

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AssembledObject:
    size_bytes: int
    sha256: str | None  # None when the caller hashed the content beforehand


async def upload_in_parts(
    objects: MultipartObjectStore,
    open_stream: Callable[[], BinaryIO],
    *,
    key: str,
    content_type: str,
    metadata: dict[str, str],
    part_size_bytes: int,
    concurrency: int,
    expected_sha256: str | None,
    on_started: Callable[[str], object] | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> AssembledObject:
    """Upload the stream as `key`. With `expected_sha256`, the content is hashed on the way
    and ChecksumMismatch raised (object not committed) when it differs; without it, the
    caller has already hashed the content and no hashing happens here. `before_commit`
    runs right before the commit and may refuse it by raising (the upload is aborted)."""
    upload_id = await objects.start(key, content_type=content_type, metadata=metadata)
    try:
        if on_started is not None:
            await _maybe_await(on_started(upload_id))
        digest = hashlib.sha256()
        size_bytes = 0
        etags: dict[int, str] = {}
        stream = await asyncio.to_thread(open_stream)
        try:
            slots = buffer_budget.slots(concurrency, part_size_bytes)
            hasher = digest if expected_sha256 is not None else None

            async def send(part_number: int, data: PartData) -> None:
                try:
                    etags[part_number] = await objects.upload_part(
                        key, upload_id, part_number, data
                    )
                finally:
                    data.close()
                    slots.release()

            async with asyncio.TaskGroup() as group:
                part_number = 0
                while True:
                    await slots.acquire()
                    try:
                        data, size = await asyncio.to_thread(
                            functools.partial(
                                cut_part,
                                stream,
                                size_bytes,
                                part_size_bytes,
                                hasher,
                                payload_sha256=objects.signs_payload,
                            )
                        )
                    except BaseException:
                        slots.release()
                        raise
                    if not size and part_number > 0:
                        data.close()
                        slots.release()
                        break
                    part_number += 1
                    size_bytes += size
                    group.create_task(send(part_number, data))
                    if size < part_size_bytes:
                        break
        finally:
            await asyncio.to_thread(stream.close)
        sha256 = digest.hexdigest() if expected_sha256 is not None else None
        if expected_sha256 is not None and expected_sha256 != sha256:
            raise ChecksumMismatch(
                "The assembled file's SHA-256 does not match the declared sha256.",
                details={"expected": expected_sha256, "actual": sha256},
            )
        if before_commit is not None:
            await before_commit()
        await objects.finish(key, upload_id, [etags[n] for n in sorted(etags)])
    except BaseException as error:
        await abort_quietly(objects, key, upload_id)
        if isinstance(error, BaseExceptionGroup):
            raise first_service_error(error) from error
        raise
    return AssembledObject(size_bytes=size_bytes, sha256=sha256)


PartData = io.BytesIO | PartBody


def cut_part(
    stream: BinaryIO,
    start: int,
    size_bytes: int,
    hasher: Hasher | None,
    *,
    payload_sha256: bool = False,
) -> tuple[PartData, int]:
    """The part of the stream at `start`, up to `size_bytes` long (fewer only at its end),
    with its length, hashed into `hasher` on the way (blocking I/O). A `PartBody` left in
    staging where the stream offers one, else a buffer holding the bytes. Close it once
    sent. With `payload_sha256` (the store signs part bodies), a `PartBody` hashed here
    also gets its own SHA-256 from the same reads, in this worker thread: else the
    signer reads the part once more and hashes it on the event loop."""
    if isinstance(stream, RangedStream):
        body = stream.staged_range(start, size_bytes)
        try:
            if hasher is not None:
                body.hash_into(hasher, payload_sha256=payload_sha256)
        except BaseException:
            body.close()
            raise
        return body, body.size_bytes
    if stream.tell() != start:
        stream.seek(start)
    data, size = read_part_body(stream, size_bytes)
    if hasher is not None:
        with data.getbuffer() as view:
            hasher.update(view)
    return data, size


def read_part_body(stream: BinaryIO, size_bytes: int) -> tuple[io.BytesIO, int]:
    """Up to `size_bytes` of the stream (fewer only at its end), read straight into the
    buffer that will be sent, with the count read. A BytesIO that owns its buffer, on
    purpose: botocore wraps a `bytes` body in a BytesIO that shares it, and aiohttp's
    `getbuffer()` on that copies the whole part before sending; this one is sent as it
    is, so a part is held in memory once, not twice (bench/README.md, "Memory")."""
    body = io.BytesIO()
    if size_bytes:
        body.seek(size_bytes - 1)
        body.write(b"\0")  # sizes the buffer once
    filled = 0
    with body.getbuffer() as view:
        while filled < size_bytes:
            got = stream.readinto(view[filled:])  # type: ignore[attr-defined]
            if not got:
                break
            filled += got
    body.truncate(filled)
    body.seek(0)
    return body, filled


def hash_stream(open_stream: Callable[[], BinaryIO], block_bytes: int = 1024 * 1024) -> str:
    """SHA-256 of a whole stream, read in blocks (blocking: run it in a worker thread).
    The block is outside the part-buffer budget, hence small: 1 MiB hashes as fast."""
    digest = hashlib.sha256()
    with open_stream() as stream:
        while block := stream.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value


async def abort_quietly(objects: MultipartObjectStore, key: str, upload_id: str) -> None:
    """Abort a multipart upload on a failure path; a failed abort is only logged."""
    try:
        await objects.abort(key, upload_id)
    except Exception as error:  # noqa: BLE001 - the janitor reclaims what an abort could not
        log.warning("s3.abort_failed", key=key, error_type=type(error).__name__)


def first_service_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to answer with when parallel part uploads failed together."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_service_error(error)
        if isinstance(error, ServiceError):
            return error
    return group.exceptions[0]
