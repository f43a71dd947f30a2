"""Holding a session lease (`ports.LeaseStore`) while work runs: taken once, renewed in
the background every third of its time to live, released when the work ends.

`HeldLease.lost` is set when a renewal finds the lease taken over (or the database
unreachable until the lease ran out): the holder should stop, and every fenced write it
still attempts fails on its stale generation anyway. A step outside the database (S3's
commit) is fenced by `confirm()` right before it: a renewal that raises LeaseLost if the
lease was taken, and otherwise gives the step a whole `ttl_seconds` in which nobody else
can take it. A holder that dies simply stops renewing; anyone may take the lease once it
lapses, within `ttl_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType

import structlog

from app.errors import LeaseLost
from app.uploads.models import utc_now
from app.uploads.ports import Lease, LeaseStore

log = structlog.get_logger(__name__)

# The lease for the once-per-session work of eager flush and complete.
WORK = "work"


class HeldLease:
    def __init__(
        self,
        store: LeaseStore,
        lease: Lease,
        *,
        ttl_seconds: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.lease = lease
        self.ttl_seconds = ttl_seconds
        self.lost = asyncio.Event()
        self._clock = clock
        self._renewing: asyncio.Task[None] | None = None
        self._released = False

    @property
    def generation(self) -> int:
        return self.lease.generation

    async def __aenter__(self) -> HeldLease:
        self._renewing = asyncio.create_task(self._renew_until_cancelled())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.release())

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        if not self.lost.is_set():
            try:
                await self.store.release(self.lease, now=self._clock())
            except Exception as error:  # noqa: BLE001 - it lapses on its own
                log.warning("lease.release_failed", error_type=type(error).__name__)

    async def _renew_until_cancelled(self) -> None:
        interval = self.ttl_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.store.renew(
                    self.lease, now=self._clock(), ttl_seconds=self.ttl_seconds
                )
            except Exception as error:  # noqa: BLE001 - retried until the lease runs out
                log.warning("lease.renew_failed", error_type=type(error).__name__)
                if self._clock() >= self.lease.expires_at:
                    self._lose()
                    return
                continue
            if renewed is None:
                self._lose()
                return
            self.lease = renewed

    async def confirm(self) -> None:
        """Renew now, or raise LeaseLost if the lease is no longer ours."""
        if self.lost.is_set():
            raise LeaseLost()
        renewed = await self.store.renew(
            self.lease, now=self._clock(), ttl_seconds=self.ttl_seconds
        )
        if renewed is None:
            self._lose()
            raise LeaseLost()
        self.lease = renewed

    def _lose(self) -> None:
        log.warning(
            "lease.lost",
            session_id=self.lease.session_id,
            name=self.lease.name,
            generation=self.lease.generation,
        )
        self.lost.set()


async def try_hold(
    store: LeaseStore,
    session_id: str,
    name: str = WORK,
    *,
    ttl_seconds: float,
    clock: Callable[[], datetime] = utc_now,
) -> HeldLease | None:
    """The lease, if free or lapsed; None while someone else holds it. Enter the result
    (`async with`) to keep it renewed."""
    lease = await store.acquire(
        session_id, name, holder=uuid.uuid4().hex, now=clock(), ttl_seconds=ttl_seconds
    )
    if lease is None:
        return None
    return HeldLease(store, lease, ttl_seconds=ttl_seconds, clock=clock)


class MemoryLeaseStore:
    """Leases within one process, for a service built without a shared database
    (component tests). Same rules as the SQL store: generations only grow."""

    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], Lease] = {}

    async def acquire(
        self, session_id: str, name: str, *, holder: str, now: datetime, ttl_seconds: float
    ) -> Lease | None:
        current = self._leases.get((session_id, name))
        if current is not None and current.expires_at > now:
            return None
        generation = current.generation + 1 if current is not None else 1
        lease = Lease(session_id, name, holder, generation, now + timedelta(seconds=ttl_seconds))
        self._leases[(session_id, name)] = lease
        return lease

    async def renew(self, lease: Lease, *, now: datetime, ttl_seconds: float) -> Lease | None:
        current = self._leases.get((lease.session_id, lease.name))
        if current is None or (current.generation, current.holder) != (
            lease.generation,
            lease.holder,
        ):
            return None
        renewed = replace(lease, expires_at=now + timedelta(seconds=ttl_seconds))
        self._leases[(lease.session_id, lease.name)] = renewed
        return renewed

    async def release(self, lease: Lease, *, now: datetime) -> None:
        current = self._leases.get((lease.session_id, lease.name))
        if current is not None and (current.generation, current.holder) == (
            lease.generation,
            lease.holder,
        ):
            self._leases[(lease.session_id, lease.name)] = replace(current, expires_at=now)

    async def current(self, session_id: str, name: str) -> Lease | None:
        return self._leases.get((session_id, name))
