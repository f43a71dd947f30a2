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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote

import structlog
from aiobotocore.config import AioConfig
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
