"""Holding an upload's writer lease for the length of one appending request.

Taking it: if another request holds it, ask that holder to finish (it sees
RELEASE_REQUESTED at its next renewal and ends its body, keeping what it got), then poll
until it is free, for at most the lease's TTL plus a little: a live holder lets go within
one renewal interval, a dead one's lease lapses within the TTL. Beyond that: 423.

Holding it: a background task renews it every TTL/4, started by a timer at the first
renewal (most requests end sooner: no task to create and cancel for them). `fence()`
runs before each piece is recorded and refuses (423) once the lease is known lost, or
could be (no successful renewal for most of a TTL), so a writer that was replaced never
records over the new one.

Letting go: the request's last record releases the lease in its own transaction
(`lease_to_release`), which also refuses the record if the lease was taken over; only a
request that ends without such a record (a refusal, an empty body, a body that ended on
a piece boundary) releases it in a transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

import structlog

from app.errors import UploadLocked
from app.uploads.ports import Lease, LeaseState, UploadLocks

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.1


class HeldUpload:
    def __init__(
        self,
        locks: UploadLocks,
        session_id: str,
        *,
        ttl_seconds: float,
        on_release_requested: Callable[[], None] = lambda: None,
        taken: Lease | None = None,
        taken_at: float = 0.0,
    ) -> None:
        """`taken`: the lease, if the request already took it (with its first reads,
        `SqlUploadLocks.open`) at `taken_at` (`time.monotonic()`)."""
        self._locks = locks
        self._session_id = session_id
        self._ttl = ttl_seconds
        self.on_release_requested = on_release_requested
        self._lease: Lease | None = taken
        self._renewed_at = taken_at
        self._lost = False
        self._released = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> HeldUpload:
        if self._lease is not None:
            due = self._renewed_at + self._ttl / 4 - time.monotonic()
            self._timer = asyncio.get_running_loop().call_later(
                max(due, 0.0), self._start_renewing, self._lease
            )
            return self
        deadline = time.monotonic() + self._ttl + 2
        asked = False
        while True:
            lease = await self._locks.acquire(self._session_id, ttl_seconds=self._ttl)
            if lease is not None:
                break
            if not asked:
                await self._locks.request_release(self._session_id)
                asked = True
            if time.monotonic() >= deadline:
                raise UploadLocked()
            await asyncio.sleep(POLL_SECONDS)  # polling the lease row, with a deadline
        self._lease = lease
        self._renewed_at = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(
            self._ttl / 4, self._start_renewing, lease
        )
        return self

    def _start_renewing(self, lease: Lease) -> None:
        self._timer = None
        self._task = asyncio.create_task(self._keep_renewed(lease))

    async def _keep_renewed(self, lease: Lease) -> None:
        asked = False
        while True:
            try:
                state = await self._locks.renew(lease, ttl_seconds=self._ttl)
            except Exception:  # noqa: BLE001 - a database hiccup: fence() decides by age
                log.warning("upload.lease_renew_failed", session_id=lease.session_id)
                await asyncio.sleep(self._ttl / 4)
                continue
            if state is LeaseState.LOST:
                self._lost = True
                self.on_release_requested()
                return
            self._renewed_at = time.monotonic()
            if state is LeaseState.RELEASE_REQUESTED and not asked:
                asked = True
                log.info("upload.lease_release_requested", session_id=lease.session_id)
                self.on_release_requested()
            await asyncio.sleep(self._ttl / 4)

    async def fence(self) -> None:
        if self._lost or self._lease is None:
            raise UploadLocked("This request lost the upload to another request.")
        if time.monotonic() - self._renewed_at > self._ttl * 0.5:
            state = await self._locks.renew(self._lease, ttl_seconds=self._ttl)
            if state is LeaseState.LOST:
                self._lost = True
                raise UploadLocked("This request lost the upload to another request.")
            self._renewed_at = time.monotonic()

    def lease_to_release(self) -> Lease | None:
        """For the request's last record to release in its own transaction (which fails
        if the lease was taken over): one transaction less per request."""
        return None if self._lost else self._lease

    def released_with_record(self, lease: Lease) -> None:
        if lease is self._lease:
            self._released = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None and not self._lost and not self._released:
            await asyncio.shield(self._locks.release(self._lease))
