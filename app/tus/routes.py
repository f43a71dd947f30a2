"""tus 1.0.0 requests -> UploadService calls -> tus answers. See the package docstring.

Errors are the service's own (`app.errors`, rendered in the error envelope); the tus
edge (`app.tus.edge`) adds `Tus-Resumable` to every answer, whatever its status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from app.api.deps import AppContainer, CurrentPrincipal, container_of, principal_from
from app.container import Container
from app.errors import (
    InvalidUploadHeader,
    SessionExpired,
    SessionNotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.ietf import handlers as ietf
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
from app.storage.resumable import OpenedUpload
from app.tus.headers import (
    PATCH_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    http_date,
    parse_checksum,
    parse_metadata,
    parse_offset,
)
from app.uploads.models import (
    AppendChecksum,
    InitRequest,
    Principal,
    SessionState,
    UploadSession,
)
from app.uploads.ports import ResumableRecord

PROTOCOL = "tus"


def build_router(base_path: str) -> APIRouter:
    """The tus endpoint at `base_path` ("/files/"): the collection and its uploads."""
    base = "/" + base_path.strip("/")
    router = APIRouter(include_in_schema=False)
    for path in (base, base + "/"):
        router.add_api_route(path, create, methods=["POST"])
        router.add_api_route(path, options, methods=["OPTIONS"])
    item = base + "/{upload_id}"
    router.add_api_route(item, head, methods=["HEAD"])
    router.add_api_route(item, patch, methods=["PATCH"], route_class_override=PlainPatchRoute)
    router.add_api_route(item, delete, methods=["DELETE"])
    router.add_api_route(item, options, methods=["OPTIONS"])
    return router


# ------------------------------------------------------------------------------ OPTIONS
async def options(request: Request, container: AppContainer) -> Response:
    if ietf.interop_version(request) is not None:
        return Response(status_code=204, headers=ietf.limit_headers(container))
    return Response(status_code=204, headers=capability_headers(container))


def capability_headers(container: Container) -> dict[str, str]:
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(TUS_EXTENSIONS),
        "Tus-Max-Size": str(container.settings.max_file_size),
        "Tus-Checksum-Algorithm": "sha1,md5,sha256",
    }


# ------------------------------------------------------------------------------- POST
async def create(
    request: Request, principal: CurrentPrincipal, container: AppContainer
) -> Response:
    if ietf.interop_version(request) is not None:
        return await ietf.create(request, principal, container)
    headers = request.headers
    uploads = container.uploads
    raw_metadata = headers.get("upload-metadata")
    metadata = parse_metadata(raw_metadata)
    concat_header = headers.get("upload-concat")
    concat: str | None = None
    partial_ids: list[str] = []
    if concat_header == "partial":
        concat = "partial"
    elif concat_header is not None and concat_header.startswith("final;"):
        concat = "final"
        partial_ids = [_id_from_url(url) for url in concat_header[6:].split()]
        if not partial_ids:
            raise InvalidUploadHeader("Upload-Concat final names no partial uploads.")
    elif concat_header is not None:
        raise InvalidUploadHeader("Upload-Concat must be `partial` or `final;<urls>`.")

    length: int | None = None
    if concat != "final":
        if "upload-length" in headers:
            length = parse_offset(headers["upload-length"], "Upload-Length")
        elif headers.get("upload-defer-length") != "1":
            raise InvalidUploadHeader("Upload-Length or Upload-Defer-Length: 1 is required.")

    session = await uploads.init(
        principal,
        InitRequest(
            main_service_file_id=_file_id(principal, metadata, partial=concat == "partial"),
            original_file_name=_file_name(container, metadata, partial=concat == "partial"),
            total_size=length,
            content_type=metadata.get("filetype") or None,
        ),
    )
    await container.resumable_records.create(
        ResumableRecord(
            session.id,
            PROTOCOL,
            metadata=raw_metadata or None,
            concat=concat,
            parts=tuple(partial_ids),
        )
    )
    answer = {
        "Location": location(request, container, session.id),
        "Upload-Expires": http_date(session.expires_at),
    }
    if concat == "final":
        offset = await uploads.concatenate(principal, session.id, partial_ids)
        await _complete(container, principal, session.id, session.main_service_file_id)
        answer["Upload-Offset"] = str(offset)
        return Response(status_code=201, headers=answer)
    if has_body(request):
        offset = await _append(request, container, principal, session, 0, concat)
        answer["Upload-Offset"] = str(offset)
        session_length = length
        if concat != "partial" and session_length is not None and offset == session_length:
            await _complete(container, principal, session.id, session.main_service_file_id)
    return Response(status_code=201, headers=answer)


# ------------------------------------------------------------------------------- HEAD
async def head(
    upload_id: str, request: Request, principal: CurrentPrincipal, container: AppContainer
) -> Response:
    if ietf.interop_version(request) is not None:
        return await ietf.head(upload_id, request, principal, container)
    view = await container.uploads.status(principal, parse_upload_id(upload_id))
    record = await container.resumable_records.get(view.session.id)
    if record is None or record.protocol != PROTOCOL:
        raise SessionNotFound()
    session = view.session
    if view.state is SessionState.EXPIRED:
        raise SessionExpired()
    if view.state in (SessionState.ABORTED, SessionState.FAILED):
        raise SessionNotFound()
    offset = view.received_bytes
    if view.state is SessionState.COMPLETED and session.result is not None:
        offset = int(session.result["size"])
    answer = {
        "Upload-Offset": str(offset),
        "Cache-Control": "no-store",
        STATE_HEADER: view.state.value,
    }
    if session.total_size is not None:
        answer["Upload-Length"] = str(session.total_size)
    elif record.concat != "final":
        answer["Upload-Defer-Length"] = "1"
    if record.metadata:
        answer["Upload-Metadata"] = record.metadata
    if record.concat == "partial":
        answer["Upload-Concat"] = "partial"
    elif record.concat == "final":
        answer["Upload-Concat"] = _final_concat(request, container, record.parts)
    if view.state is SessionState.UPLOADING:
        answer["Upload-Expires"] = http_date(session.expires_at)
    return Response(status_code=200, headers=answer)


# ------------------------------------------------------------------------------ PATCH
class PlainPatchRoute(APIRoute):
    """PATCH (tus and IETF appends) answered by plain ASGI (`serve_patch`) once the
    router has matched it, as `PlainChunkRoute` serves the chunk route: FastAPI's
    per-request machinery (its Request handler, dependency resolution, exit stacks) was
    7.6% of a 1 MiB PATCH's GIL samples (py-spy), for three look-ups. The same dependencies
    in the same order, the same errors (they propagate to the app's handlers: the
    envelope); the route is outside the OpenAPI document either way; another method
    gets FastAPI's own answer (405)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "PATCH":
            await super().handle(scope, receive, send)
            return
        await serve_patch(scope, receive, send)


async def serve_patch(scope: Scope, receive: Receive, send: Send) -> None:
    """`patch`'s dependencies resolved as FastAPI does (container, then the bearer token,
    then the principal), then `patch` itself."""
    request = Request(scope, receive, send)
    container = container_of(request)
    principal = await principal_from(container, request.headers.get("authorization"))
    response = await patch(scope["path_params"]["upload_id"], request, principal, container)
    await response(scope, receive, send)


async def patch(
    upload_id: str, request: Request, principal: CurrentPrincipal, container: AppContainer
) -> Response:
    if ietf.interop_version(request) is not None:
        return await ietf.patch(upload_id, request, principal, container)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != PATCH_CONTENT_TYPE:
        raise UnsupportedMediaType(f"A PATCH body must be {PATCH_CONTENT_TYPE}.")
    offset = parse_offset(request.headers.get("upload-offset"), "Upload-Offset")
    uploads = container.uploads
    opened = await open_upload(container, principal, parse_upload_id(upload_id))
    session = opened.session
    try:
        record = await container.resumable_records.get(session.id)
        if record is None or record.protocol != PROTOCOL:
            raise SessionNotFound()
        if "upload-length" in request.headers:
            length = parse_offset(request.headers["upload-length"], "Upload-Length")
            session = await uploads.declare_size(principal, session.id, length)
        checksum = parse_checksum(request.headers.get("upload-checksum"))
    except BaseException:
        await let_go(container, opened)
        raise
    new_offset = await _append(
        request, container, principal, session, offset, record.concat, opened, checksum
    )
    if (
        record.concat != "partial"
        and session.total_size is not None
        and new_offset == session.total_size
    ):
        await _complete(container, principal, session.id, session.main_service_file_id)
    return Response(
        status_code=204,
        headers={"Upload-Offset": str(new_offset), "Upload-Expires": http_date(session.expires_at)},
    )


# ----------------------------------------------------------------------------- DELETE
async def delete(
    upload_id: str, request: Request, principal: CurrentPrincipal, container: AppContainer
) -> Response:
    if ietf.interop_version(request) is not None:
        return await ietf.delete(upload_id, request, principal, container)
    await container.uploads.abort(principal, parse_upload_id(upload_id))
    return Response(status_code=204)


# ---------------------------------------------------------------------------- helpers
async def _append(
    request: Request,
    container: Container,
    principal: Principal,
    session: UploadSession,
    offset: int,
    concat: str | None,
    opened: OpenedUpload | None = None,
    checksum: tuple[str, bytes] | None = None,
) -> int:
    """Stream the body into the upload at `offset` under the upload's writer lease
    (`opened`: as `open_upload` found the upload, its checksum header already read)."""
    if opened is None:
        checksum = parse_checksum(request.headers.get("upload-checksum"))
    appended = await append_body(
        request,
        container,
        principal,
        session.id,
        offset,
        checksum=AppendChecksum(*checksum) if checksum is not None else None,
        flush_eagerly=concat != "partial",
        checked=session,
        opened=opened,
    )
    return appended.offset


async def _complete(
    container: Container, principal: Principal, session_id: str, file_id: int
) -> dict[str, Any]:
    return await complete_upload(container, principal, session_id, file_id, PROTOCOL)


def _file_id(principal: Principal, metadata: dict[str, str], *, partial: bool) -> int:
    declared = metadata.get("main_service_file_id")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise ValidationFailed("main_service_file_id must be a non-negative integer.")
        return int(declared)
    if principal.file_id is not None:
        return principal.file_id
    if partial:
        return 0  # the final upload carries the real one
    raise ValidationFailed(
        "Upload-Metadata must carry main_service_file_id (or the token a file_id claim)."
    )


def _file_name(container: Container, metadata: dict[str, str], *, partial: bool) -> str:
    name = metadata.get("filename") or metadata.get("name")
    if name:
        return name
    if partial:
        # Partial uploads carry no metadata (tus-js-client's parallelUploads); the final
        # upload's name is the one checked and used. This one only has to pass the rules.
        return "partial." + sorted(container.settings.allowed_audio_extensions)[0]
    raise ValidationFailed("Upload-Metadata must carry filename.")


def _final_concat(request: Request, container: Container, parts: tuple[str, ...]) -> str:
    """`final;<url> <url>...`: the partial uploads' URLs as the spec's example writes
    them, path-absolute (the path of each one's `Location`, so a root path counts)."""
    urls = " ".join(urlsplit(location(request, container, part)).path for part in parts)
    return f"final;{urls}" if urls else "final"


def _id_from_url(url: str) -> str:
    return parse_upload_id(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
