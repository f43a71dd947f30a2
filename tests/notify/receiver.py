"""A real webhook receiver on loopback (uvicorn serving a tiny ASGI app), as the main
service would run one: it verifies every signature with the shared secret and answers
with the statuses a test plans, then 200."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from app.notify.signing import verify_signature


@dataclass(frozen=True)
class Received:
    event_id: str
    body: bytes
    signature_ok: bool
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


class Receiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.plan: list[int] = []  # statuses to answer next, in order; then `default`
        self.default = 200
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/uploads"

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        ok = verify_signature(
            self.secret, body, headers.get("x-upload-signature", ""), now_unix=time.time()
        )
        status = self.plan.pop(0) if self.plan else self.default
        if not ok:
            status = 401
        self.requests.append(Received(headers.get("x-upload-event-id", ""), body, ok, status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> Receiver:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        await wait_until(lambda: self._server is not None and self._server.started, 10)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = None
        self._task = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(condition: Callable[[], bool], timeout_seconds: float) -> None:
    """Polls `condition` until it holds; fails the test at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds} s")
        await asyncio.sleep(0.05)
