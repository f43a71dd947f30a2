"""Request handling both resumable front doors share: append a request body under the
upload's writer lease, complete through the core, the upload's URL."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from app.container import Container
from app.errors import SessionNotFound
from app.resumable.body import RequestBody
from app.resumable.lease import HeldUpload
from app.storage.resumable import OpenedUpload
from app.uploads.models import AppendChecksum, CompleteRequest, Principal, UploadSession

# The header a client reads on HEAD to learn an upload's outcome: the session's state
# (uploading, completing, completed...); GET /upload/<id> then has the result.
STATE_HEADER = "X-Upload-State"


@dataclass(frozen=True)
class Appended:
    offset: int  # the upload's offset after this request
    cut_short: bool  # the body ended early (disconnect, stall, release): not the last byte


async def open_upload(container: Container, principal: Principal, session_id: str) -> OpenedUpload:
    """An append's `check_can_receive` (same checks, same refusals), and where the
    database allows (SQLite) the upload's writer lease and its chunk totals read in the
    same one hand-off: two database hand-offs per append instead of four (this one and
    the last record's). Whoever opens must `append_body(opened=...)` or `let_go`."""
    opened = await container.upload_locks.open(
        session_id,
        ttl_seconds=container.settings.upload_lease_seconds,
        check=container.uploads.receiving_check(principal),
    )
    if opened is None:
        opened = OpenedUpload(await container.uploads.check_can_receive(principal, session_id))
    return opened


async def let_go(container: Container, opened: OpenedUpload) -> None:
    """The request was refused after `open_upload`: give back a lease it took."""
    if opened.lease is not None:
        # Shielded as HeldUpload's own release: a client gone mid-refusal must not leave
        # the upload locked until the lease lapses.
        await asyncio.shield(container.upload_locks.release(opened.lease))


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
    opened: OpenedUpload | None = None,
) -> Appended:
    """`checked`: the session as this request's `check_can_receive` returned it.
    `opened`: what `open_upload` found (the session, perhaps the lease and the totals);
    its session is `checked` unless `checked` is given (a size declared since)."""
    taken = opened.lease if opened is not None else None
    if opened is not None and checked is None:
        checked = opened.session
    settings = container.settings
    # Every byte counts against the caller's staging quota as it arrives, as for chunks.
    new_writer = container.uploads.new_append_writer
    if container.quota is not None:
        try:
            new_writer = await container.quota.writer_factory(principal.sub, new_writer)
        except BaseException:
            if opened is not None:
                await let_go(container, opened)
            raise
    body = RequestBody(request.receive, idle_timeout_seconds=settings.chunk_idle_timeout_seconds)
    async with HeldUpload(
        container.upload_locks,
        session_id,
        ttl_seconds=settings.upload_lease_seconds,
        on_release_requested=body.stop,
        taken=taken,
        taken_at=opened.taken_at if opened is not None else 0.0,
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
            totals=opened.totals if taken is not None and opened is not None else None,
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
