"""Reads a chunk upload's multipart body as a stream, straight into a staging file.

The body is never held whole: python-multipart's push parser hands us pieces as they
arrive, and the `chunk` part's bytes go to a ChunkWriter (which hashes and writes them
in a worker thread). Parts may come in any order; when `upload_session_id` precedes the
chunk, the session is checked before any chunk byte is stored. On any failure the
partial file is removed, including a body that stalls longer than the idle timeout and
a request cancelled by shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import ClientDisconnected, MalformedBody, RequestIdleTimeout, ValidationFailed
from app.uploads.models import StagedFile
from app.uploads.ports import ChunkWriter

FILE_FIELD = "chunk"
MAX_FIELD_BYTES = 1024


@dataclass
class ChunkForm:
    fields: dict[str, str] = field(default_factory=dict)
    staged: StagedFile | None = None


@dataclass
class _Part:
    name: str = ""
    value: bytearray = field(default_factory=bytearray)
    writer: ChunkWriter | None = None


async def read_chunk_form(
    request: Request,
    new_writer: Callable[[], ChunkWriter],
    on_session_id: Callable[[str], Awaitable[None]],
    *,
    idle_timeout_seconds: float | None = None,
) -> ChunkForm:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ValidationFailed("The body must be multipart/form-data with a boundary.")

    # Callbacks only record what happened; the async loop below acts on it after each
    # parser.write(), so one piece of body may carry several parts.
    events: list[tuple[str, memoryview | str | None]] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        events.append(("headers", _field_name(headers)))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", memoryview(data)[start:end]))

    def on_part_end() -> None:
        events.append(("end", None))

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )

    form = ChunkForm()
    part = _Part()
    writers: list[ChunkWriter] = []
    try:
        async for piece in _with_idle_timeout(request.stream(), idle_timeout_seconds):
            if not piece:
                continue
            if not isinstance(piece, bytes):
                # The writer keeps views of the pieces until they are on disk.
                piece = bytes(piece)
            try:
                parser.write(piece)
            except MultipartParseError:
                raise MalformedBody("The multipart body is malformed.") from None
            for kind, data in events:
                if kind == "headers":
                    part = _Part(name=str(data))
                    if part.name == FILE_FIELD:
                        if form.staged is not None or writers:
                            raise ValidationFailed("Only one chunk part is allowed.")
                        session_id = form.fields.get("upload_session_id")
                        if session_id is not None:
                            await on_session_id(session_id)
                        part.writer = new_writer()
                        writers.append(part.writer)
                elif kind == "data" and isinstance(data, memoryview):
                    if part.writer is not None:
                        await part.writer.write(data)
                    else:
                        part.value.extend(data)
                        if len(part.value) > MAX_FIELD_BYTES:
                            raise ValidationFailed(f"Form field {part.name!r} is too long.")
                elif kind == "end":
                    if part.writer is not None:
                        form.staged = await part.writer.finish()
                    elif part.name:
                        form.fields[part.name] = part.value.decode("utf-8", "replace").strip()
                    part = _Part()
            events.clear()
        parser.finalize()
    except ClientDisconnect:
        await _discard(writers, form)
        raise ClientDisconnected() from None
    except BaseException:
        await _discard(writers, form)
        raise
    if form.staged is None:
        await _discard(writers, form)
    return form


async def _with_idle_timeout(
    pieces: AsyncIterator[bytes], idle_timeout_seconds: float | None
) -> AsyncIterator[bytes]:
    """The body's pieces; a wait longer than the timeout for the next one ends it.

    One timer per request, re-armed only when it fires early, instead of a timeout scope
    per piece: a chunk arrives in hundreds of pieces and this runs for each of them."""
    if idle_timeout_seconds is None:
        async for piece in pieces:
            yield piece
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    waiting_since: float | None = None
    timed_out = False
    timer: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal timer, timed_out
        now = loop.time()
        if waiting_since is not None and now - waiting_since >= idle_timeout_seconds:
            timed_out = True
            task.cancel()
        else:
            timer = loop.call_at((waiting_since or now) + idle_timeout_seconds, check)

    timer = loop.call_at(loop.time() + idle_timeout_seconds, check)
    try:
        while True:
            waiting_since = loop.time()
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if timed_out and task.uncancel() == 0:
                    raise RequestIdleTimeout(
                        details={"idle_timeout_seconds": idle_timeout_seconds}
                    ) from None
                raise
            waiting_since = None
            yield piece
    finally:
        if timer is not None:
            timer.cancel()


async def _discard(writers: list[ChunkWriter], form: ChunkForm) -> None:
    for writer in writers:
        await writer.discard()
    form.staged = None


def _field_name(headers: dict[bytes, bytes]) -> str:
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    return options.get(b"name", b"").decode("utf-8", "replace")
