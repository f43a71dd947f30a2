"""One process-wide byte budget for the part buffers of completions and eager flushes.

Each completion and each background flush holds up to `S3_MAX_CONCURRENCY` parts of
`S3_PART_SIZE_BYTES` in memory (read from staging, then in flight to S3); on its own
that is bounded, but nothing bounded how many run at once: 100 concurrent completes of
8 MiB parts x 4 would take over 3 GiB. Every part buffer is now reserved here before it
is filled and given back when its upload ends, so together they never exceed
`PART_BUFFER_BUDGET_BYTES`; a completion that finds the budget spent waits (FIFO) for
parts of others to land. It only ever waits for parts already in flight, which need
nothing more to finish, so waiting cannot deadlock.

Invariants:
- `used_bytes <= limit_bytes`, except that a reservation larger than the whole budget is
  granted when nothing else is held (a part size above the budget must not hang forever).
- Grants are first come, first served: a big reservation is not starved by small ones.
- It is loop-agnostic (a thread lock plus one future per waiter, woken on its own
  loop), so one instance really is process-wide: the service's loop, test apps on
  other loops, and worker threads calling `release` are all safe.

The call sites only swap their `asyncio.Semaphore(n)` for `slots(n, part_size)`: same
`acquire()` / `release()`, now also drawing on the budget.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "BudgetedSlots",
    "BufferBudget",
    "configure",
    "process_budget",
    "slots",
]

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024
"""The default of `PART_BUFFER_BUDGET_BYTES`: 32 parts of the default 8 MiB, eight
completions at full speed (the default concurrency is 4)."""


@dataclass(eq=False)  # identity: `in`/`remove` must find this waiter, not an equal one
class _Waiter:
    size_bytes: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class BufferBudget:
    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("the buffer budget must be at least one byte")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self, size_bytes: int) -> None:
        """Wait until `size_bytes` fit in the budget, then hold them."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(size_bytes):
                self._take(size_bytes)
                return
            waiter = _Waiter(size_bytes, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    granted = False
                else:
                    granted = True  # granted as it was being cancelled: give it back
            if granted:
                self.release(size_bytes)
            else:
                self._wake()  # a big waiter leaving the head may unblock small ones
            raise

    def release(self, size_bytes: int) -> None:
        with self._lock:
            self.used_bytes -= size_bytes
            assert self.used_bytes >= 0, "released more than was acquired"
        self._wake()

    def _fits(self, size_bytes: int) -> bool:
        return self.used_bytes == 0 or self.used_bytes + size_bytes <= self.limit_bytes

    def _take(self, size_bytes: int) -> None:
        self.used_bytes += size_bytes
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)

    def _wake(self) -> None:
        granted: list[_Waiter] = []
        with self._lock:
            while self._waiters and self._fits(self._waiters[0].size_bytes):
                waiter = self._waiters.popleft()
                self._take(waiter.size_bytes)
                granted.append(waiter)
        for waiter in granted:
            waiter.loop.call_soon_threadsafe(_grant, waiter)


def _grant(waiter: _Waiter) -> None:
    if waiter.future.done():
        return  # cancelled meanwhile; acquire's handler has given the bytes back
    waiter.future.set_result(None)


class BudgetedSlots:
    """An `asyncio.Semaphore(concurrency)` whose every slot also holds `part_size_bytes`
    of the process budget while it is taken."""

    def __init__(self, concurrency: int, part_size_bytes: int, budget: BufferBudget) -> None:
        self._local = asyncio.Semaphore(concurrency)
        self._part_size_bytes = part_size_bytes
        self._budget = budget

    async def acquire(self) -> bool:
        await self._local.acquire()
        try:
            await self._budget.acquire(self._part_size_bytes)
        except BaseException:
            self._local.release()
            raise
        return True

    def release(self) -> None:
        self._budget.release(self._part_size_bytes)
        self._local.release()


_process_budget = BufferBudget(DEFAULT_BUDGET_BYTES)


def configure(limit_bytes: int) -> None:
    """Set the process budget's size (at start-up, from PART_BUFFER_BUDGET_BYTES). Bytes
    already held stay held; the new limit applies to what is asked next."""
    _process_budget.limit_bytes = limit_bytes
    _process_budget._wake()


def process_budget() -> BufferBudget:
    return _process_budget


def slots(concurrency: int, part_size_bytes: int) -> BudgetedSlots:
    """What the part-buffer call sites use instead of `asyncio.Semaphore(concurrency)`."""
    return BudgetedSlots(concurrency, part_size_bytes, _process_budget)
