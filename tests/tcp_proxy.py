"""A loopback TCP proxy that can be cut off, to make real network outages in tests.

It can also count what the client sends (occurrences of byte patterns such as
`b"POST /upload/chunk "`, found across read boundaries) and cut itself off once a given
number of bytes has gone upstream, or slow what goes upstream to a given rate (a slow
link: bandwidth shaping, not synchronisation)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int, *, watch: Iterable[bytes] = ()) -> None:
        self.target = (target_host, target_port)
        self.online = True
        self.connections = 0
        self.upstream_bytes = 0
        self.cut_after_upstream_bytes: int | None = None
        self.upstream_bytes_per_second: float | None = None
        # Once this many bytes have gone upstream, drop the connections open then and
        # stay online (a retry gets through); a one-shot, counted in `drops`.
        self.drop_once_after_upstream_bytes: int | None = None
        self.drops = 0
        self.seen: Counter[bytes] = Counter()
        self._watch = tuple(watch)
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Go offline: drop every open connection and refuse new ones."""
        self.online = False
        for writer in list(self._streams):
            writer.transport.abort()
        self._streams.clear()

    def drop_connections(self) -> None:
        """Drop every open connection, and stay online."""
        for writer in list(self._streams):
            writer.transport.abort()
        self._streams.clear()

    def restore(self) -> None:
        self.online = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.online:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._streams.update({writer, up_writer})
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer)
        )

    def _observe(self, tail: bytes, data: bytes) -> bytes:
        """Count watched patterns in what goes upstream; returns the tail to keep."""
        window = tail + data
        for pattern in self._watch:
            # Only matches that end inside the new data: none is counted twice.
            start = max(0, len(tail) - len(pattern) + 1)
            self.seen[pattern] += window.count(pattern, start)
        self.upstream_bytes += len(data)
        longest = max((len(p) for p in self._watch), default=1)
        return window[-(longest - 1) :] if longest > 1 else b""

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool = False
    ) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                if not self.online:
                    break
                if upstream:
                    tail = self._observe(tail, data)
                    limit = self.cut_after_upstream_bytes
                    if limit is not None and self.upstream_bytes >= limit:
                        self.cut()
                        break
                    once = self.drop_once_after_upstream_bytes
                    if once is not None and self.upstream_bytes >= once:
                        self.drop_once_after_upstream_bytes = None
                        self.drops += 1
                        self.drop_connections()
                        break
                    rate = self.upstream_bytes_per_second
                    if rate:
                        await asyncio.sleep(len(data) / rate)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._streams.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort() if not self.online else writer.close()
