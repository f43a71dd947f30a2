"""IETF resumable-upload requests (interop 6 and 8) -> UploadService calls -> answers.

Creation (POST): `Upload-Complete` (required), `Upload-Length` (optional; with `?1` the
Content-Length is the length), the file's name from `Content-Disposition: ...;
filename=...` or the `filename` query parameter, `main_service_file_id` from the query (or
the token's `file_id` claim). Offset retrieval (HEAD): 204 with `Upload-Offset`,
`Upload-Complete`, `Upload-Length` once known, `Upload-Limit`. Append (PATCH):
`Upload-Offset`, `Upload-Complete`; interop 8 requires `application/partial-upload`; a
wrong offset is 409 with the right one in `Upload-Offset` and a problem body. Cancellation
(DELETE): 204. Completion answers 200 with the chunk API's complete envelope.

`Upload-Limit` states only what is true of this service: `max-size` (MAX_FILE_SIZE) on
every answer, and `expires` (the upload's remaining lifetime in seconds) on answers about
an upload still receiving bytes. The others the draft defines are left out, which means
"no limit": `min-size` is 0, an append's body has no size cap of its own (it is streamed
in part-sized pieces; only `max-size` bounds it) and no least size (any piece is staged).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from app.api.envelope import success
from app.errors import (
    InvalidUploadHeader,
    OffsetMismatch,
    SessionExpired,
    SessionNotAcceptingChunks,
    SessionNotFound,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
    ValidationFailed,
)
from app.resumable.requests import (
    STATE_HEADER,
    append_body,
    complete_upload,
    has_body,
    let_go,
    location,
    open_upload,
    parse_upload_id,
)
from app.uploads.models import InitRequest, Principal, SessionState, UploadSession, utc_now
from app.uploads.ports import ResumableRecord

if TYPE_CHECKING:
    from app.container import Container

PROTOCOL = "ietf"
SUPPORTED_VERSIONS = ("6", "8")
PARTIAL_UPLOAD_TYPE = "application/partial-upload"
INCOMPLETE = {"Upload-Complete": "?0"}
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.IGNORECASE)


def interop_version(request: Request) -> str | None:
    return request.headers.get("upload-draft-interop-version")


def _version(request: Request) -> str:
    version = interop_version(request) or ""
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedProtocolVersion(
            "Unsupported Upload-Draft-Interop-Version.",
            details={"supported": list(SUPPORTED_VERSIONS)},
        )
    return version


def limit_headers(container: Container, expires_at: datetime | None = None) -> dict[str, str]:
    """`Upload-Limit`, a structured-field dictionary. `expires_at`: the upload's expiry,
    for answers about an upload that still receives bytes (OPTIONS is about none)."""
    limits = [f"max-size={container.settings.max_file_size}"]
    if expires_at is not None:
        # Rounded down: the upload lives at least that long (each append extends it).
        remaining = int((expires_at - utc_now()).total_seconds())
        limits.append(f"expires={max(remaining, 0)}")
    return {"Upload-Limit": ", ".join(limits)}


def _flag(request: Request) -> bool:
    value = request.headers.get("upload-complete")
    if value not in ("?0", "?1"):
        raise InvalidUploadHeader("Upload-Complete must be ?0 or ?1.")
    return value == "?1"


def _answer(
    version: str,
    container: Container,
    headers: dict[str, str] | None = None,
    *,
    expires_at: datetime | None = None,
) -> dict[str, str]:
    return {
        "Upload-Draft-Interop-Version": version,
        **limit_headers(container, expires_at),
        **(headers or {}),
    }


async def create(request: Request, principal: Principal, container: Container) -> Response:
    version = _version(request)
    complete = _flag(request)
    uploads = container.uploads
    length: int | None = None
    if "upload-length" in request.headers:
        length = _int(request.headers["upload-length"], "Upload-Length")
    elif complete and (request.headers.get("content-length") or "").isdigit():
        length = int(request.headers["content-length"])
    session = await uploads.init(
        principal,
        InitRequest(
            main_service_file_id=_file_id(request, principal),
            original_file_name=_file_name(request),
            total_size=length,
            content_type=request.headers.get("content-type") or None,
        ),
    )
    await container.resumable_records.create(ResumableRecord(session.id, PROTOCOL))
    url = location(request, container, session.id)
    offset = 0
    cut_short = False
    if has_body(request):
        appended = await append_body(request, container, principal, session.id, 0)
        offset, cut_short = appended.offset, appended.cut_short
    headers = {"Location": url, "Upload-Offset": str(offset)}
    if complete and not cut_short:
        completed = await _complete(version, container, principal, session, offset, headers)
        if completed is not None:
            return completed
    return Response(
        status_code=201,
        headers=_answer(
            version, container, {**headers, **INCOMPLETE}, expires_at=session.expires_at
        ),
    )


async def head(
    upload_id: str, request: Request, principal: Principal, container: Container
) -> Response:
    version = _version(request)
    view = await container.uploads.status(principal, parse_upload_id(upload_id))
    await _own_record(container, view.session.id)
    if view.state is SessionState.EXPIRED:
        raise SessionExpired()
    if view.state in (SessionState.ABORTED, SessionState.FAILED):
        raise SessionNotFound()
    session = view.session
    done = view.state is SessionState.COMPLETED and session.result is not None
    offset = int(session.result["size"]) if done and session.result else view.received_bytes
    headers = _answer(
        version,
        container,
        {
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if done else "?0",
            "Cache-Control": "no-store",
            STATE_HEADER: view.state.value,
        },
        expires_at=session.expires_at if view.state is SessionState.UPLOADING else None,
    )
    if session.total_size is not None:
        headers["Upload-Length"] = str(session.total_size)
    return Response(status_code=204, headers=headers)


async def patch(
    upload_id: str, request: Request, principal: Principal, container: Container
) -> Response:
    version = _version(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if version == "8" and content_type != PARTIAL_UPLOAD_TYPE:
        raise UnsupportedMediaType(f"An append must be {PARTIAL_UPLOAD_TYPE}.")
    offset = _int(request.headers.get("upload-offset"), "Upload-Offset")
    complete = _flag(request)
    uploads = container.uploads
    session_id = parse_upload_id(upload_id)
    try:
        opened = await open_upload(container, principal, session_id)
    except SessionNotAcceptingChunks:
        current = await uploads.status(principal, session_id)
        if current.state is SessionState.COMPLETED:
            return _problem(version, container, 400, "completed-upload", "The upload is complete.")
        raise
    session = opened.session
    try:
        await _own_record(container, session.id)
        if "upload-length" in request.headers:
            session = await uploads.declare_size(
                principal, session.id, _int(request.headers["upload-length"], "Upload-Length")
            )
    except BaseException:
        await let_go(container, opened)
        raise
    try:
        appended = await append_body(
            request, container, principal, session.id, offset, checked=session, opened=opened
        )
    except OffsetMismatch as mismatch:
        expected = int((mismatch.details or {}).get("offset", 0))
        return _problem(
            version,
            container,
            409,
            "mismatching-upload-offset",
            "Upload-Offset does not match the upload's offset.",
            headers={"Upload-Offset": str(expected)},
            **{"expected-offset": expected, "provided-offset": offset},
        )
    headers = {"Upload-Offset": str(appended.offset)}
    if complete and not appended.cut_short:
        completed = await _complete(
            version, container, principal, session, appended.offset, headers
        )
        if completed is not None:
            return completed
    return Response(
        status_code=204,
        headers=_answer(
            version, container, {**headers, **INCOMPLETE}, expires_at=session.expires_at
        ),
    )


async def _complete(
    version: str,
    container: Container,
    principal: Principal,
    session: UploadSession,
    offset: int,
    headers: dict[str, str],
) -> Response | None:
    """The request said `Upload-Complete: ?1` and its whole body arrived: with no length
    declared, `offset` is the length. At the length, complete through the core (200 with
    the complete envelope; its refusals, 415..., propagate); short of it, None: the caller
    answers `?0` and the client resumes from `Upload-Offset`."""
    length = session.total_size
    if length is None:
        await container.uploads.declare_size(principal, session.id, offset)
        length = offset
    if offset != length:
        return None
    result = await complete_upload(
        container, principal, session.id, session.main_service_file_id, PROTOCOL
    )
    return JSONResponse(
        success("File upload completed.", result),
        status_code=200,
        headers=_answer(version, container, {**headers, "Upload-Complete": "?1"}),
    )


async def delete(
    upload_id: str, request: Request, principal: Principal, container: Container
) -> Response:
    version = _version(request)
    await container.uploads.abort(principal, parse_upload_id(upload_id))
    return Response(status_code=204, headers={"Upload-Draft-Interop-Version": version})


async def _own_record(container: Container, session_id: str) -> None:
    record = await container.resumable_records.get(session_id)
    if record is None or record.protocol != PROTOCOL:
        raise SessionNotFound()


def _problem(
    version: str,
    container: Container,
    status: int,
    kind: str,
    title: str,
    *,
    headers: dict[str, str] | None = None,
    **fields: object,
) -> JSONResponse:
    return JSONResponse(
        {"type": PROBLEM_TYPES + kind, "title": title, **fields},
        status_code=status,
        media_type="application/problem+json",
        headers=_answer(version, container, headers),
    )


def _int(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 19:
        raise InvalidUploadHeader(f"{name} must be a non-negative integer.")
    return int(value)


def _file_id(request: Request, principal: Principal) -> int:
    declared = request.query_params.get("main_service_file_id")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise ValidationFailed("main_service_file_id must be a non-negative integer.")
        return int(declared)
    if principal.file_id is not None:
        return principal.file_id
    raise ValidationFailed("main_service_file_id is required (query parameter or token claim).")


def _file_name(request: Request) -> str:
    name = request.query_params.get("filename")
    if not name:
        match = _FILENAME.search(request.headers.get("content-disposition", ""))
        name = match.group(1) if match else None
    if not name:
        raise ValidationFailed("The file name is required (Content-Disposition or ?filename=).")
    return name
