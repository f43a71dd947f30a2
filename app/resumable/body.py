"""A request body as an async iterator of bytes that *ends* instead of failing when the
client goes away, stalls longer than the idle timeout, or the request is told to stop.

Ending is what the resumable protocols want: the bytes that did arrive are kept and the
next HEAD reports them (tus: "the server SHOULD accept and store the bytes received").
Which of those happened is left in `disconnected`, `timed_out` and `stopped`.

No task or timeout scope per message: one timer per request (re-armed only when it fires
early) and `stop()` cancel the reading task while it waits for the next message, and the
iterator turns its own cancellations back into an end of body. A cancellation from
anywhere else (shutdown) still propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Receive


class RequestBody:
    def __init__(self, receive: Receive, *, idle_timeout_seconds: float) -> None:
        self._receive = receive
        self._idle_timeout_seconds = idle_timeout_seconds
        self._task: asyncio.Task[object] | None = None
        self._waiting_since: float | None = None
        self._stop_requested = False
        self._cancelled_by_us = False
        self.disconnected = False
        self.timed_out = False
        self.stopped = False
        self.received_bytes = 0

    def stop(self) -> None:
        """End the body at once (the upload's lease is wanted by another request)."""
        self._stop_requested = True
        if self._waiting_since is not None and self._task is not None:
            self._cancel()

    def _cancel(self) -> None:
        if not self._cancelled_by_us and self._task is not None:
            self._cancelled_by_us = True
            self._task.cancel()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        timeout = self._idle_timeout_seconds
        timer: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal timer
            now = loop.time()
            since = self._waiting_since
            if since is not None and now - since >= timeout:
                self.timed_out = True
                self._cancel()
            else:
                timer = loop.call_at((since or now) + timeout, check)

        timer = loop.call_at(loop.time() + timeout, check)
        try:
            while not self._stop_requested:
                self._waiting_since = loop.time()
                try:
                    message = await self._receive()
                except asyncio.CancelledError:
                    task = self._task
                    if self._cancelled_by_us and task is not None and task.uncancel() == 0:
                        self.stopped = self._stop_requested
                        return
                    raise
                finally:
                    self._waiting_since = None
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    return
                data = message.get("body", b"")
                if data:
                    self.received_bytes += len(data)
                    yield data
                if not message.get("more_body", False):
                    return
            self.stopped = True
        finally:
            if timer is not None:
                timer.cancel()

    @property
    def cut_short(self) -> bool:
        return self.disconnected or self.timed_out or self.stopped
