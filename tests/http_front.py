"""A small real HTTP/1.1 server on loopback that sits in front of the service: it
forwards every request, except that it can answer chosen requests itself (say, one 429
with `Retry-After`), and it records when each request arrived and what it answered.

Bodies must carry Content-Length (httpx always sends it for known-size bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import httpx

HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


@dataclass
class Seen:
    method: str
    path: str
    arrived_at: float  # time.monotonic() when the request line arrived
    status: int = 0
    answered_at: float = 0.0  # time.monotonic() just before the answer was written


@dataclass
class Refusal:
    """Answer the next `times` requests to `method path` with `status` and headers."""

    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


class HttpFront:
    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.seen: list[Seen] = []
        self.refusals: list[Refusal] = []
        self._server: asyncio.Server | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> HttpFront:
        self._http = httpx.AsyncClient(base_url=self.target_url, timeout=120)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._http is not None:
            await self._http.aclose()

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen = Seen("", "", time.monotonic())
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                seen.method, seen.path, _ = request_line.split(" ", 2)
                headers = [tuple(line.split(":", 1)) for line in header_lines if ":" in line]
                length = next(
                    (int(v) for k, v in headers if k.strip().lower() == "content-length"), 0
                )
                body = await reader.readexactly(length) if length else b""
                self.seen.append(seen)
                status, out_headers, content = await self._answer(seen, headers, body)
                lines = [f"HTTP/1.1 {status} X"]
                lines += [f"{k}: {v}" for k, v in out_headers.items()]
                lines += [f"content-length: {len(content)}", "", ""]
                # Stamped before writing: the client cannot have read the answer earlier.
                seen.status, seen.answered_at = status, time.monotonic()
                writer.write("\r\n".join(lines).encode("latin-1") + content)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self, seen: Seen, headers: list[tuple[str, ...]], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        for refusal in self.refusals:
            if refusal.times > 0 and (refusal.method, refusal.path) == (seen.method, seen.path):
                refusal.times -= 1
                envelope = {
                    "status": "error",
                    "message": "Slow down.",
                    "error": {"code": "rate_limited", "details": None},
                }
                out = {"content-type": "application/json", **refusal.headers}
                return refusal.status, out, json.dumps(envelope).encode()
        assert self._http is not None
        forwarded = {
            k.strip(): v.strip() for k, v in headers if k.strip().lower() not in HOP_BY_HOP
        }
        response = await self._http.request(seen.method, seen.path, headers=forwarded, content=body)
        out = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in HOP_BY_HOP | {"content-encoding"}
        }
        return response.status_code, out, response.content
