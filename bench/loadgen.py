"""A low-overhead HTTP/1.1 load generator on raw asyncio streams.

httpx costs about 0.5 CPU-s per GiB as a client, which on a 2-core machine is taken
from the server being measured; writing pre-built request heads and one shared payload
buffer (never copied) straight to the socket costs a fraction of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SEND_SLICE_BYTES = 256 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection; requests on it run one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1024 * 1024
        )
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: Sequence[bytes | memoryview] = (),
    ) -> Response:
        if self._writer is None:
            await self.open()
        assert self._reader is not None
        assert self._writer is not None
        length = sum(len(part) for part in body)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {length}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        for part in body:
            view = memoryview(part)
            # In slices: what the socket does not take at once, the transport copies
            # into its buffer (a whole-file body would be copied whole, at ~2 CPU-s per
            # GiB taken from the servers measured on the same cores).
            for start in range(0, len(view), SEND_SLICE_BYTES):
                self._writer.write(view[start : start + SEND_SLICE_BYTES])
                await self._writer.drain()
        await self._writer.drain()
        return await self._read_response()

    async def _read_response(self) -> Response:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
                body += await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                del body[-2:]
            return Response(status, headers, bytes(body))
        length = int(headers.get("content-length", "0"))
        return Response(status, headers, await self._reader.readexactly(length))


class MultipartChunk:
    """The body of a `POST /upload/chunk`: a small head, the payload (shared, never
    copied), and a tail."""

    BOUNDARY = "benchboundary7f3a9c"

    @classmethod
    def content_type(cls) -> str:
        return f"multipart/form-data; boundary={cls.BOUNDARY}"

    @classmethod
    def parts(
        cls, session_id: str, index: int, payload: bytes | memoryview
    ) -> list[bytes | memoryview]:
        b = cls.BOUNDARY
        head = (
            f'--{b}\r\nContent-Disposition: form-data; name="upload_session_id"\r\n\r\n'
            f"{session_id}\r\n"
            f'--{b}\r\nContent-Disposition: form-data; name="chunk_index"\r\n\r\n{index}\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="chunk"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        return [head, payload, f"\r\n--{b}--\r\n".encode()]
