"""A value computed at most once per `ttl_seconds`, by one caller at a time.

For answers that are costly to compute and asked for by anyone who can reach the port
(`/readyz`, `/metrics`): a flood of requests shares one computation in flight and then
its result for `ttl_seconds`, so it costs what one request costs. A caller that is
cancelled does not cancel the shared computation; a failure is not remembered (the next
caller computes afresh).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(
        self,
        compute: Callable[[], Awaitable[T]],
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._value: tuple[T, float] | None = None
        self._running: asyncio.Future[T] | None = None
        self.computations = 0  # how many times `compute` ran: for tests and metrics

    async def get(self) -> T:
        if self._value is not None:
            value, computed_at = self._value
            if self._clock() - computed_at < self.ttl_seconds:
                return value
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
            # Retrieved even if every waiter was cancelled: no "never retrieved" warning.
            self._running.add_done_callback(_consume)
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            self.computations += 1
            value = await self._compute()
            self._value = (value, self._clock())
            return value
        finally:
            self._running = None


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
