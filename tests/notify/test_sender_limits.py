"""The webhook sender against receivers that misbehave on purpose (issue 12): one that
answers with an endless body, and one that drips its response a byte at a time. Each is a
real HTTP server on loopback; each attempt must end on its own deadline and read a
bounded amount, so it cannot stall the other deliveries of a pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from app.notify.sender import MAX_RESPONSE_BYTES, WebhookSender, new_http_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MiB = 1024 * 1024


@asynccontextmanager
async def raw_receiver(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)


async def test_an_endless_response_body_is_not_read() -> None:
    sent = [0]
    connection_closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        try:
            while sent[0] < 1024 * MiB:
                writer.write(bytes(64 * 1024))
                await writer.drain()
                sent[0] += 64 * 1024
        except ConnectionError:
            connection_closed.set()
        writer.close()

    async with raw_receiver(endless) as url, new_http_client() as client:
        sender = WebhookSender(client, url, b"secret")
        result = await asyncio.wait_for(sender.send("e-1", b"{}", timeout_seconds=30), timeout=60)
        assert result.delivered
        await asyncio.wait_for(connection_closed.wait(), timeout=30)
    # What was taken off the socket is the cap plus what kernel buffers hold, not 1 GiB.
    assert MAX_RESPONSE_BYTES < sent[0] < 64 * MiB


async def test_a_dripping_receiver_is_cut_off_at_the_attempt_deadline() -> None:
    async def dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the receiver's pace, not a synchronisation
        except ConnectionError:
            pass
        writer.close()

    async with raw_receiver(dripping) as url, new_http_client() as client:
        sender = WebhookSender(client, url, b"secret")
        # httpx's own timeout is per read, which every dripped byte would reset.
        result = await asyncio.wait_for(sender.send("e-2", b"{}", timeout_seconds=1), 30)
        assert not result.delivered
        assert result.status_code is None
        assert result.error == "timeout after 1 s"
