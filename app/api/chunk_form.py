"""Reads a chunk upload's multipart body as a stream, straight into a staging file.

The body is never held whole: python-multipart's push parser hands us pieces as they
arrive, and the `chunk` part's bytes go to a ChunkWriter (which hashes and writes them
in a worker thread). Parts may come in any order; when `upload_session_id` precedes the
chunk, the session is checked before any chunk byte is stored (unless the whole chunk
part arrived in the piece that began it: refusing early would then save nothing, and the
chunk's record checks the session in its own hand-off), and when it follows, as soon as
that field ends. On any failure the partial file is removed, including a body
that stalls longer than the idle timeout and a request cancelled by shutdown.

Caps against hostile forms (issue 12), enforced while the bytes arrive, whatever the
transfer encoding: at most MAX_FIELDS non-file parts, MAX_FIELD_BYTES per field value and
MAX_FIELDS_TOTAL_BYTES for all of them, MAX_PART_HEADER_BYTES of headers per part, and
`max_body_bytes` for the whole body (preamble and epilogue included). A known field sent
twice is refused rather than silently overwritten. Crossing a cap stops reading at once:
the form's cost is bounded by the caps, not by what the client sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    ClientDisconnected,
    MalformedBody,
    RequestIdleTimeout,
    RequestTooLarge,
    ValidationFailed,
)
from app.uploads.models import StagedFile
from app.uploads.ports import ChunkWriter

FILE_FIELD = "chunk"
KNOWN_FIELDS = frozenset({"upload_session_id", "chunk_index", "chunk_sha256"})
MAX_FIELDS = 8
MAX_FIELD_BYTES = 1024
MAX_FIELDS_TOTAL_BYTES = 4096
MAX_PART_HEADER_BYTES = 2048
# Header values seen before, and what parsing them gave: a client sends the same form
# headers with every chunk (and usually the same boundary), and python-multipart's
# option parsing costs more of the event loop than the rest of a small part's handling.
# Bounded: values up to 512 characters, emptied when full (a hostile client's distinct
# headers only evict; parsing them costs what it did).
PARSED_HEADERS_CAPACITY = 256
PARSED_HEADER_MAX_CHARS = 512


_K = TypeVar("_K", str, bytes)
_V = TypeVar("_V")


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
    max_body_bytes: int | None = None,
) -> ChunkForm:
    content_type, boundary = _content_type(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not boundary:
        raise ValidationFailed("The body must be multipart/form-data with a boundary.")

    # Callbacks only record what happened; the async loop below acts on it after each
    # parser.write(), so one piece of body may carry several parts.
    events: list[tuple[str, memoryview | str | None]] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    header_bytes = 0
    parts_seen = 0

    # The caps on parts and headers are checked in the callbacks, inside parser.write():
    # one piece of body can hold thousands of tiny parts.
    def count_header_bytes(size: int) -> None:
        nonlocal header_bytes
        header_bytes += size
        if header_bytes > MAX_PART_HEADER_BYTES:
            raise ValidationFailed(
                "A form part's headers are too long.",
                details={"max_part_header_bytes": MAX_PART_HEADER_BYTES},
            )

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_header_bytes(end - start)
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_header_bytes(end - start)
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal header_bytes, parts_seen
        name = _field_name(headers)
        headers.clear()
        header_bytes = 0
        parts_seen += 1
        if parts_seen > MAX_FIELDS + 1:  # the fields and one chunk part
            raise ValidationFailed(
                f"The form has too many fields (at most {MAX_FIELDS} besides the chunk).",
                details={"max_fields": MAX_FIELDS},
            )
        events.append(("headers", name))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", memoryview(data)[start:end]))

    def on_part_end() -> None:
        events.append(("end", None))

    try:
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
    except FormParserError:
        # python-multipart takes boundaries of up to 256 bytes (RFC 2046 allows 70); a
        # longer one was a 500.
        raise MalformedBody("The multipart boundary is too long.") from None

    form = ChunkForm()
    part = _Part()
    writers: list[ChunkWriter] = []
    body_bytes = 0
    field_bytes = 0
    try:
        async for piece in with_idle_timeout(request.stream(), idle_timeout_seconds):
            if not piece:
                continue
            body_bytes += len(piece)
            if max_body_bytes is not None and body_bytes > max_body_bytes:
                raise RequestTooLarge(
                    "The request body is larger than a chunk and its form fields.",
                    details={"max_body_bytes": max_body_bytes},
                )
            if not isinstance(piece, bytes):
                # The writer keeps views of the pieces until they are on disk.
                piece = bytes(piece)
            try:
                parser.write(piece)
            except MultipartParseError:
                raise MalformedBody("The multipart body is malformed.") from None
            for position, (kind, data) in enumerate(events):
                if kind == "headers":
                    part = _Part(name=str(data))
                    if part.name == FILE_FIELD:
                        if form.staged is not None or writers:
                            raise ValidationFailed("Only one chunk part is allowed.")
                        session_id = form.fields.get("upload_session_id")
                        if session_id is not None and not _part_ends(events, position):
                            await on_session_id(session_id)
                        part.writer = new_writer()
                        writers.append(part.writer)
                elif kind == "data" and isinstance(data, memoryview):
                    if part.writer is not None:
                        await part.writer.write(data)
                    else:
                        part.value.extend(data)
                        field_bytes += len(data)
                        if len(part.value) > MAX_FIELD_BYTES:
                            raise ValidationFailed(
                                f"Form field {_shown(part.name)} is too long.",
                                details={"max_field_bytes": MAX_FIELD_BYTES},
                            )
                        if field_bytes > MAX_FIELDS_TOTAL_BYTES:
                            raise ValidationFailed(
                                "The form fields are too long together.",
                                details={"max_fields_total_bytes": MAX_FIELDS_TOTAL_BYTES},
                            )
                elif kind == "end":
                    if part.writer is not None:
                        form.staged = await part.writer.finish()
                    elif part.name:
                        if part.name in KNOWN_FIELDS and part.name in form.fields:
                            raise ValidationFailed(
                                f"Form field {_shown(part.name)} is given more than once."
                            )
                        value = part.value.decode("utf-8", "replace").strip()
                        form.fields[part.name] = value
                        if part.name == "upload_session_id" and writers:
                            # The chunk came first: drop it now if the session is not
                            # the caller's, rather than after the rest of the body.
                            await on_session_id(value)
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


async def with_idle_timeout(
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


def _part_ends(events: list[tuple[str, memoryview | str | None]], position: int) -> bool:
    """Whether the part whose headers are at `position` also ends in this piece: its
    bytes are all here, so checking its session first would save the client nothing
    (the chunk's record checks it, in the same hand-off)."""
    return any(kind == "end" for kind, _ in events[position + 1 :])


async def _discard(writers: list[ChunkWriter], form: ChunkForm) -> None:
    for writer in writers:
        await writer.discard()
    form.staged = None


def _shown(name: str) -> str:
    """A field name as quoted back in a message: bounded, printable."""
    return repr(name[:40])


def _field_name(headers: dict[bytes, bytes]) -> str:
    disposition = headers.get(b"content-disposition", b"")
    name = _field_names.get(disposition)
    if name is None:
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        _remember(_field_names, disposition, name)
    return name


def _content_type(header: str | None) -> tuple[bytes, bytes | None]:
    """The body's media type and multipart boundary, as `parse_options_header` reads them."""
    key = header or ""
    parsed = _content_types.get(key)
    if parsed is None:
        content_type, options = parse_options_header(header)
        parsed = (content_type, options.get(b"boundary"))
        _remember(_content_types, key, parsed)
    return parsed


_field_names: dict[bytes, str] = {}
_content_types: dict[str, tuple[bytes, bytes | None]] = {}


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(key) > PARSED_HEADER_MAX_CHARS:
        return
    if len(cache) >= PARSED_HEADERS_CAPACITY:
        cache.clear()
    cache[key] = value
