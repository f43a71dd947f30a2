"""A raw-socket HTTP/1.1 client: every header as written, bodies that can stop short
(the connection then closes mid-request, as a lost network does). What the IETF
resumable-upload tests speak, so nothing between them and the wire adds or hides a header."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    interim: list[int] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    send_only: int | None = None,
) -> RawResponse | None:
    """Send one request on a fresh connection. `send_only`: declare the whole body but
    write only that many bytes, then close (returns None: no response is read)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        if send_only is not None:
            writer.write(body[:send_only])
            await writer.drain()
            return None
        writer.write(body)
        await writer.drain()
        return await _read_response(reader, head_request=method == "HEAD")
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader, *, head_request: bool) -> RawResponse:
    interim: list[int] = []
    while True:
        status_line = (await reader.readline()).decode("latin-1").strip()
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    body = b""
    if not head_request and status not in (204, 304):
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    return RawResponse(status, headers, body, interim)
