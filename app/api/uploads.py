"""The upload endpoints: init, chunk, complete, status, abort."""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from app.api.chunk_form import read_chunk_form
from app.api.deps import AppContainer, CurrentPrincipal, Uploads, container_of, principal_from
from app.api.envelope import success
from app.api.json_body import json_request_body, read_json_body
from app.api.openapi_errors import (
    ABORT_ERRORS,
    CHUNK_ERRORS,
    COMPLETE_ERRORS,
    INIT_ERRORS,
    STATUS_ERRORS,
    error_responses,
)
from app.api.schemas import CompleteBody, Envelope, InitBody
from app.container import Container
from app.errors import ChunkTooLarge, SessionNotFound, ValidationFailed
from app.uploads.models import (
    CompleteRequest,
    InitRequest,
    Principal,
    SessionView,
    UploadSession,
)
from app.uploads.service import UploadService

router = APIRouter(prefix="/upload", tags=["upload"])

MESSAGE_NOTIFIED = "File upload completed and main service notified."
MESSAGE_QUEUED = "File upload completed; main service notification queued."
# Without MAIN_SERVICE_NOTIFY_URL nobody is told: the seed's message would be untrue.
MESSAGE_STORED = "File upload completed."
# A multipart envelope around a chunk is a few hundred bytes; allow generous slack.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Nine digits is past any MAX_CHUNKS; longer is refused before int() reads it.
_ASCII_INDEX = re.compile(r"[0-9]{1,9}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@router.post(
    "/init",
    response_model=Envelope,
    responses=error_responses(*INIT_ERRORS),
    openapi_extra=json_request_body(InitBody),
)
async def init_upload(
    request: Request, principal: CurrentPrincipal, uploads: Uploads, container: AppContainer
) -> Any:
    # The token is checked (a dependency) before a byte of the body is read.
    body = await read_json_body(
        request, InitBody, idle_timeout_seconds=container.settings.json_idle_timeout_seconds
    )
    session = await uploads.init(principal, InitRequest(**body.model_dump()))
    return success(
        "Upload session initialized.",
        {
            "upload_session_id": session.id,
            "expires_at": session.expires_at.isoformat(),
            "max_chunk_size": uploads.policy.max_chunk_size,
        },
    )


async def upload_chunk(
    request: Request, principal: CurrentPrincipal, uploads: Uploads, container: AppContainer
) -> Any:
    # The route as FastAPI documents it; `PlainChunkRoute` serves it (`serve_chunk`). No
    # docstring: it would become the operation's description in the OpenAPI document.
    return await receive_chunk(request, principal, uploads, container)


class PlainChunkRoute(APIRoute):
    """`POST /upload/chunk` answered by plain ASGI (`serve_chunk`) once the router has
    matched it: FastAPI's per-request machinery (its Request handler, dependency
    resolution, exit stacks; ~7% of a 1 KiB chunk's event-loop time) for the same
    steps. The route is still declared through FastAPI with `upload_chunk`'s signature,
    so the OpenAPI document is what it was; errors still propagate to the app's
    handlers (the envelope); other methods get FastAPI's own answer (405)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await super().handle(scope, receive, send)
            return
        await serve_chunk(scope, receive, send)


async def serve_chunk(scope: Scope, receive: Receive, send: Send) -> None:
    """`upload_chunk`'s dependencies, resolved as FastAPI does (container, then bearer
    token, then the principal), and the same body."""
    request = Request(scope, receive)
    container = container_of(request)
    principal = await principal_from(container, request.headers.get("authorization"))
    response = await receive_chunk(request, principal, container.uploads, container)
    await response(scope, receive, send)


async def receive_chunk(
    request: Request, principal: Principal, uploads: UploadService, container: Container
) -> Response:
    declared_length = request.headers.get("content-length")
    limit = uploads.policy.max_chunk_size + MULTIPART_OVERHEAD_BYTES
    if declared_length and declared_length.isdigit() and int(declared_length) > limit:
        raise ChunkTooLarge(details={"max_chunk_size": uploads.policy.max_chunk_size})

    checked: list[UploadSession] = []

    async def check_session(session_id: str) -> None:
        _bind_session(session_id)
        checked.append(await uploads.check_can_receive(principal, _session_id(session_id)))

    # Every byte counts against the caller's staging quota as it arrives, even a chunk
    # sent before the field that names its session.
    new_writer = uploads.new_chunk_writer
    if container.quota is not None:
        new_writer = await container.quota.writer_factory(principal.sub, new_writer)
    form = await read_chunk_form(
        request,
        new_writer,
        check_session,
        idle_timeout_seconds=container.settings.chunk_idle_timeout_seconds,
        max_body_bytes=limit,
    )
    staged = form.staged
    try:
        missing = [
            name for name in ("upload_session_id", "chunk_index") if not form.fields.get(name)
        ]
        if staged is None:
            missing.append("chunk")
        if missing:
            raise ValidationFailed(
                "Required form fields are missing.", details={"missing": missing}
            )
        session_id = _session_id(form.fields["upload_session_id"])
        _bind_session(session_id)
        index = _chunk_index(form.fields["chunk_index"])
        chunk_sha256 = _optional_sha256(form.fields.get("chunk_sha256"))
    except BaseException as error:
        if staged is not None:
            await uploads.staging.remove_temp(staged)
        named = form.fields.get("upload_session_id")
        if isinstance(error, ValidationFailed) and staged is not None and named and not checked:
            # A chunk that arrived whole skipped the session check before its bytes; the
            # session's refusal (404, 410, 409) still comes before a field's own error, as
            # when the same request arrives in pieces.
            await check_session(named)
        raise
    assert staged is not None
    chunk = await uploads.accept_chunk(
        principal, session_id, index, staged, chunk_sha256, checked=checked[0] if checked else None
    )
    # A response, not the body: the bytes FastAPI would make of it through the Envelope
    # model (`response_model` still documents it; tests/api compare the bodies).
    return chunk_stored_response(chunk.index, chunk.size_bytes, chunk.sha256)


# What JSONResponse renders of `success("Chunk uploaded successfully.", {...})`, filled
# in without a JSON encoder: the fields are two integers and a hex digest (a test
# compares the two).
_CHUNK_STORED_BODY = (
    '{"status":"success","message":"Chunk uploaded successfully.",'
    '"data":{"chunk_index":%d,"size":%d,"sha256":"%s"}}'
)


def chunk_stored_response(index: int, size_bytes: int, sha256: str) -> Response:
    data = {"chunk_index": index, "size": size_bytes, "sha256": sha256}
    if type(index) is not int or type(size_bytes) is not int or not _HEX_DIGEST.fullmatch(sha256):
        return JSONResponse(success("Chunk uploaded successfully.", data))  # not seen: a digest
    body = (_CHUNK_STORED_BODY % (index, size_bytes, sha256)).encode()
    return Response(body, media_type=JSONResponse.media_type)


router.add_api_route(
    "/chunk",
    upload_chunk,
    methods=["POST"],
    response_model=Envelope,
    responses=error_responses(*CHUNK_ERRORS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["upload_session_id", "chunk_index", "chunk"],
                        "properties": {
                            "upload_session_id": {"type": "string", "format": "uuid"},
                            "chunk_index": {"type": "integer", "minimum": 0},
                            "chunk_sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                            "chunk": {"type": "string", "format": "binary"},
                        },
                    }
                }
            },
        },
    },
    route_class_override=PlainChunkRoute,
)


@router.post(
    "/complete",
    response_model=Envelope,
    responses=error_responses(*COMPLETE_ERRORS),
    openapi_extra=json_request_body(CompleteBody),
)
async def complete_upload(
    request: Request, principal: CurrentPrincipal, uploads: Uploads, container: AppContainer
) -> Any:
    body = await read_json_body(
        request, CompleteBody, idle_timeout_seconds=container.settings.json_idle_timeout_seconds
    )
    _bind_session(str(body.upload_session_id))
    outcome = await uploads.complete(
        principal,
        CompleteRequest(
            upload_session_id=str(body.upload_session_id),
            total_chunks=body.total_chunks,
            main_service_file_id=body.main_service_file_id,
            sha256=body.sha256,
        ),
    )
    if outcome.notified is None:
        return success(MESSAGE_STORED, outcome.result)
    return success(MESSAGE_NOTIFIED if outcome.notified else MESSAGE_QUEUED, outcome.result)


@router.get(
    "/{upload_session_id}", response_model=Envelope, responses=error_responses(*STATUS_ERRORS)
)
async def upload_status(
    upload_session_id: str, principal: CurrentPrincipal, uploads: Uploads
) -> Any:
    view = await uploads.status(principal, _bind_session(_session_id_or_404(upload_session_id)))
    return success("Upload session status.", _status_data(view))


@router.delete(
    "/{upload_session_id}", response_model=Envelope, responses=error_responses(*ABORT_ERRORS)
)
async def abort_upload(
    upload_session_id: str, principal: CurrentPrincipal, uploads: Uploads
) -> Any:
    session = await uploads.abort(principal, _bind_session(_session_id_or_404(upload_session_id)))
    return success(
        "Upload session aborted.",
        {
            "upload_session_id": session.id,
            "state": session.state.value,
        },
    )


def _status_data(view: SessionView) -> dict[str, Any]:
    session = view.session
    data: dict[str, Any] = {
        "upload_session_id": session.id,
        "state": view.state.value,
        "main_service_file_id": session.main_service_file_id,
        "original_file_name": session.original_file_name,
        "received_chunks": view.received_chunks,
        "received_bytes": view.received_bytes,
        "total_chunks": session.total_chunks,
        "total_size": session.total_size,
        "expires_at": session.expires_at.isoformat(),
    }
    if session.result is not None:
        data["result"] = session.result
    return data


def _bind_session(session_id: str) -> str:
    """Every later log line of this request, and its access-log event, carry the session."""
    structlog.contextvars.bind_contextvars(session_id=session_id)
    return session_id


def _session_id(value: str) -> str:
    # uuid.UUID would take other scripts' digits (int() does); ids are ASCII.
    try:
        if not value.isascii():
            raise ValueError(value)
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationFailed("upload_session_id must be a UUID.") from None


def _session_id_or_404(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise SessionNotFound() from None


def _chunk_index(value: str) -> int:
    # ASCII digits only: str.isdigit() also takes superscript two, U+00B2 (which int()
    # refuses: a 500), and other scripts' digits, U+0661, U+FF11 (which int() reads).
    if not _ASCII_INDEX.fullmatch(value):
        raise ValidationFailed(
            "chunk_index must be a non-negative integer written in ASCII digits.",
            details={"chunk_index": value[:40]},
        )
    return int(value)


def _optional_sha256(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValidationFailed("chunk_sha256 must be 64 hexadecimal characters.")
    return value.lower()
