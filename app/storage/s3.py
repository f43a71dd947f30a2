"""The S3 multipart writer, for any S3-compatible store (AWS, MinIO, Ceph, R2, moto).

One aiobotocore client is opened at start-up and closed at shutdown. SigV4 always;
path-style addressing by default because most self-hosted stores need it. Checksums
beyond Content-MD5/SigV4 are only sent when an operation requires them, since several
S3-compatible stores reject the newer default checksum headers. Every botocore or
network error becomes StorageUnavailable here, so the domain never sees a vendor error.

Where the part body is signed (SigV4 over plain http), botocore hashes every UploadPart
body itself before sending it: one more read and SHA-256 of the part, on the event loop
(~0.6 CPU-s per GiB). A part sent from disk staging usually knows its SHA-256 already (a
part that is one whole chunk: the chunk writer's hash; else hashed in the worker-thread
pass that feeds the file's SHA-256), so UploadPart is signed by botocore's own S3 SigV4
signer with only `payload` taking that value (`_KnownPayloadS3SigV4Auth`). The store
checks the body against it exactly as against botocore's (AWS, MinIO and Ceph refuse a
body whose SHA-256 differs from the signed one).

Sending a staged part: botocore signs and measures it with the attempt's reader as body;
right before the send (`before-send`) the reader is handed to aiohttp inside a payload of
our own (`_StagedPartPayload`) that reads 256 KiB at a time on the event loop while the
page cache holds the bytes (preadv2 RWF_NOWAIT, which never waits for the disk) and in a
worker thread only when it does not. aiohttp's file payload took a thread round trip for
every 256 KiB (4,096 per GiB): with the GIL hand-offs and wake-ups, most of the send's
own CPU (bench/README.md, "Eager flush's CPU").
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote

import structlog
from aiobotocore.config import AioConfig
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError

from app.errors import StorageUnavailable
from app.lean_botocore import get_session
from app.settings import Settings
from app.uploads.ports import PartBody

log = structlog.get_logger(__name__)


def _sign_payload(settings: Settings) -> bool:
    """botocore skips the body hash over https only when a checksum header is sent, and
    we send none (see above): so decide here. Over TLS the body is already protected."""
    if settings.s3_sign_payload != "auto":
        return settings.s3_sign_payload == "always"
    endpoint = settings.s3_endpoint_url or "https://"  # unset: AWS, over https
    return not endpoint.lower().startswith("https://")


def _one_reader_per_attempt(request: Any, **_: Any) -> None:
    """botocore builds a request from the same parameters for every attempt (a retry
    after a timeout or a cut connection too) and only rewinds the body in between; a
    `PartBody` gets a reader of its own for each one instead, so a read still running
    for an abandoned attempt cannot move the position the retry reads from."""
    if isinstance(request.data, PartBody):
        request.data = request.data.open_reader()


@runtime_checkable
class _PositionalReader(Protocol):
    """A staged part's reader (app.storage.staging.RangeReader): reads at an offset,
    blocking or never waiting for the disk (those the event loop may make)."""

    def read_at(self, offset: int, size: int) -> bytes: ...

    def read_at_nowait(self, offset: int, size: int) -> bytes | bytearray | None: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


# Read per step of a part's send: a part in flight holds one such read.
SEND_BLOCK_BYTES = 256 * 1024


class _StagedPartPayload(Payload):
    """What aiohttp sends for one attempt of a staged part. aiohttp's own file payload
    reads every 256 KiB in a worker thread (32 thread round trips per 8 MiB part, the
    larger part of the send's own CPU); this one reads on the event loop when the page
    cache holds the bytes and in a worker thread otherwise. Each write starts from the
    part's first byte (aiohttp writes a body again on a fresh connection when a kept-alive
    one turns out to be closed)."""

    def __init__(self, reader: _PositionalReader, size_bytes: int) -> None:
        super().__init__(reader)
        self._reader = reader
        self._length = self._size = size_bytes

    def seek(self, offset: int, whence: int = 0) -> int:
        """botocore rewinds the body before a retry (which gets a reader of its own)."""
        return self._reader.seek(offset, whence)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a part body is bytes")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        end = self._length if content_length is None else min(self._length, content_length)
        offset = 0
        while offset < end:
            wanted = min(SEND_BLOCK_BYTES, end - offset)
            block = self._reader.read_at_nowait(offset, wanted)
            if block is None:
                loop = asyncio.get_running_loop()
                block = await loop.run_in_executor(None, self._reader.read_at, offset, wanted)
            if not block:
                raise OSError(errno.EIO, "the staged part ended before its length")
            await writer.write(block)
            offset += len(block)


def _send_staged_parts_from_the_loop(request: Any, **_: Any) -> None:
    """`before-send`: the request is signed and measured with the reader as body; only
    what aiohttp sends it through changes."""
    body = request.body
    length = request.headers.get("Content-Length")
    if length is not None and isinstance(body, _PositionalReader):
        request.body = _StagedPartPayload(body, int(length))


class _KnownPayloadS3SigV4Auth(S3SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's S3 SigV4 signer, but a body that knows its own SHA-256 (a staged part's
    reader, `payload_sha256`) is signed with it instead of being read and hashed again.
    Anything else (no known hash, an unsigned or streaming payload) goes to botocore."""

    def payload(self, request: AWSRequest) -> str:
        known = getattr(request.body, "payload_sha256", None)
        if (
            isinstance(known, str)
            and not self._is_streaming_checksum_payload(request)
            and self._should_sha256_sign_payload(request)
        ):
            return known
        return str(super().payload(request))


# A name of our own in botocore's signer registry: no signer botocore already has changes.
_KNOWN_PAYLOAD_SIGNER = "s3v4-known-payload"
AUTH_TYPE_MAPS.setdefault(_KNOWN_PAYLOAD_SIGNER, _KnownPayloadS3SigV4Auth)


def _sign_known_payloads(signature_version: str, event_name: str = "", **_: Any) -> str | None:
    """Registered last on `choose-signer`, so it runs only when no other handler chose:
    botocore's choice stands (`s3v4`) and only UploadPart gets the subclass above."""
    if signature_version == "s3v4" and event_name.endswith(".UploadPart"):
        return _KNOWN_PAYLOAD_SIGNER
    return None


@dataclass(frozen=True)
class PendingMultipartUpload:
    key: str
    upload_id: str
    initiated_at: datetime


class S3MultipartStore:
    def __init__(
        self, settings: Settings, *, on_error: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        self._on_error = on_error  # told the operation of every failed call (metrics)
        self._bucket = settings.s3_bucket_name
        self._client: Any = None
        self._stack = AsyncExitStack()

    async def open(self) -> None:
        settings = self._settings
        config = AioConfig(
            # Also what lets `_sign_known_payloads` choose: left to botocore, its own
            # choose-signer handler answers first and every part is hashed twice again.
            signature_version="s3v4",
            s3={
                "addressing_style": settings.s3_addressing_style,
                "payload_signing_enabled": _sign_payload(settings),
            },
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=settings.s3_timeout_seconds,
            read_timeout=settings.s3_timeout_seconds,
            max_pool_connections=max(10, settings.s3_max_concurrency * 4),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        credentials: dict[str, str] = {}
        if settings.s3_access_key is not None and settings.s3_secret_key is not None:
            credentials = {
                "aws_access_key_id": settings.s3_access_key.get_secret_value(),
                "aws_secret_access_key": settings.s3_secret_key.get_secret_value(),
            }
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=settings.s3_region_name,
                endpoint_url=settings.s3_endpoint_url,
                config=config,
                **credentials,
            )
        )
        # First, so the reader is in place before SigV4 (over http) hashes the body.
        self._client.meta.events.register_first(
            "request-created.s3.UploadPart", _one_reader_per_attempt
        )
        self._client.meta.events.register_last("choose-signer", _sign_known_payloads)
        self._client.meta.events.register(
            "before-send.s3.UploadPart", _send_staged_parts_from_the_loop
        )

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def signs_payload(self) -> bool:
        return _sign_payload(self._settings)

    @property
    def client(self) -> Any:
        return self._client

    def url_for(self, key: str) -> str:
        quoted = quote(key, safe="/")
        if self._settings.s3_public_base_url:
            return f"{self._settings.s3_public_base_url.rstrip('/')}/{quoted}"
        endpoint = (
            self._settings.s3_endpoint_url
            or f"https://s3.{self._settings.s3_region_name}.amazonaws.com"
        )
        return f"{endpoint.rstrip('/')}/{self._bucket}/{quoted}"

    async def start(self, key: str, *, content_type: str, metadata: dict[str, str]) -> str:
        response = await self._call(
            "create_multipart_upload",
            Bucket=self._bucket,
            Key=key,
            ContentType=content_type,
            Metadata=metadata,
        )
        return str(response["UploadId"])

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes | BinaryIO | PartBody
    ) -> str:
        response = await self._call(
            "upload_part",
            Bucket=self._bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=part_number,
            Body=data,
        )
        return str(response["ETag"])

    async def finish(self, key: str, upload_id: str, etags: Sequence[str]) -> None:
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        await self._call(
            "complete_multipart_upload",
            Bucket=self._bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def abort(self, key: str, upload_id: str) -> None:
        await self._call("abort_multipart_upload", Bucket=self._bucket, Key=key, UploadId=upload_id)

    async def check(self) -> None:
        await self._call("head_bucket", Bucket=self._bucket)

    async def list_multipart_uploads(self, prefix: str) -> list[PendingMultipartUpload]:
        """Every unfinished multipart upload whose key starts with `prefix`."""
        found: list[PendingMultipartUpload] = []
        markers: dict[str, str] = {}
        while True:
            response = await self._call(
                "list_multipart_uploads", Bucket=self._bucket, Prefix=prefix, **markers
            )
            for upload in response.get("Uploads", []):
                initiated = upload["Initiated"]
                if initiated.tzinfo is None:
                    initiated = initiated.replace(tzinfo=UTC)
                found.append(
                    PendingMultipartUpload(
                        key=str(upload["Key"]),
                        upload_id=str(upload["UploadId"]),
                        initiated_at=initiated.astimezone(UTC),
                    )
                )
            if not response.get("IsTruncated"):
                return found
            markers = {
                "KeyMarker": response.get("NextKeyMarker", ""),
                "UploadIdMarker": response.get("NextUploadIdMarker", ""),
            }

    async def call(self, operation: str, **kwargs: Any) -> Any:
        """Any other S3 operation on the shared client, its errors translated (the S3
        staging backend stages chunks through this client)."""
        return await self._call(operation, **kwargs)

    async def list_parts(self, key: str, upload_id: str) -> list[int]:
        """The part numbers S3 holds for an unfinished upload (every page)."""
        numbers: list[int] = []
        marker: dict[str, int] = {}
        while True:
            response = await self._call(
                "list_parts", Bucket=self._bucket, Key=key, UploadId=upload_id, **marker
            )
            numbers.extend(int(part["PartNumber"]) for part in response.get("Parts", []))
            if not response.get("IsTruncated"):
                return numbers
            marker = {"PartNumberMarker": int(response["NextPartNumberMarker"])}

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self._client, operation)(**kwargs)
        except (BotoCoreError, ClientError, OSError) as error:
            code = (
                error.response.get("Error", {}).get("Code")
                if isinstance(error, ClientError)
                else type(error).__name__
            )
            log.warning("s3.call_failed", operation=operation, error_code=code)
            if self._on_error is not None:
                self._on_error(operation)
            raise StorageUnavailable() from error
