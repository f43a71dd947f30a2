"""Request handling both resumable front doors share: append a request body under the
upload's writer lease, complete through the core, the upload's URL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from app.container import Container
from app.errors import SessionNotFound
from app.resumable.body import RequestBody
from app.resumable.lease import HeldUpload
from app.uploads.models import AppendChecksum, CompleteRequest, Principal, UploadSession

# The header a client reads on HEAD to learn an upload's outcome: the session's state
# (uploading, completing, completed...); GET /upload/<id> then has the result.
STATE_HEADER = "X-Upload-State"


@dataclass(frozen=True)
class Appended:
    offset: int  # the upload's offset after this request
    cut_short: bool  # the body ended early (disconnect, stall, release): not the last byte


async def append_body(
    request: Request,
    container: Container,
    principal: Principal,
    session_id: str,
    offset: int,
    *,
    checksum: AppendChecksum | None = None,
    flush_eagerly: bool = True,
    checked: UploadSession | None = None,
) -> Appended:
    """`checked`: the session as this request's `check_can_receive` returned it."""
    settings = container.settings
    # Every byte counts against the caller's staging quota as it arrives, as for chunks.
    new_writer = container.uploads.new_append_writer
    if container.quota is not None:
        new_writer = await container.quota.writer_factory(principal.sub, new_writer)
    body = RequestBody(request.receive, idle_timeout_seconds=settings.chunk_idle_timeout_seconds)
    async with HeldUpload(
        container.upload_locks,
        session_id,
        ttl_seconds=settings.upload_lease_seconds,
        on_release_requested=body.stop,
    ) as held:
        offset = await container.uploads.append(
            principal,
            session_id,
            offset=offset,
            body=body,
            checksum=checksum,
            fence=held.fence,
            flush_eagerly=flush_eagerly,
            new_writer=new_writer,
            checked=checked,
            writer_lease=held,
        )
    return Appended(offset, body.cut_short)


async def complete_upload(
    container: Container, principal: Principal, session_id: str, file_id: int, protocol: str
) -> dict[str, Any]:
    """Complete through the core: audio check, S3, outbox. Raises its refusals (415...)."""
    view = await container.uploads.status(principal, session_id)
    outcome = await container.uploads.complete(
        principal,
        CompleteRequest(
            upload_session_id=session_id,
            total_chunks=len(view.chunks),
            main_service_file_id=file_id,
            protocol=protocol,
        ),
    )
    return outcome.result


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.isdigit() and int(length) > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def location(request: Request, container: Container, session_id: str) -> str:
    base = "/" + container.settings.tus_base_path.strip("/")
    return str(request.base_url).rstrip("/") + f"{base}/{session_id}"


def parse_upload_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SessionNotFound() from None
