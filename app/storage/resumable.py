"""Adapters for the resumable front doors: their protocol records, and the per-upload
writer lease (`UploadLocks`) on the sessions database.

The lease is a row per upload: `holder` (random per acquisition), `generation` (+1 per
acquisition), `expires_at` and `release_requested`. Taking it is one guarded UPDATE of a
lapsed row, or an INSERT of a new one whose primary key makes a second taker fail, so two
replicas can never both hold it. Expiry is short (seconds) and the holder renews it while
its request runs, so a killed process blocks an upload for seconds, not for the long
timeouts of a dead TCP connection. Times come from the caller's clock; replicas are
assumed to agree on time within a fraction of the TTL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.tables import resumable_uploads, upload_locks
from app.uploads.models import utc_now
from app.uploads.ports import Lease, LeaseState, ResumableRecord

L = upload_locks.c
R = resumable_uploads.c


class SqlResumableRecords:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, record: ResumableRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(resumable_uploads).values(
                    session_id=record.session_id,
                    protocol=record.protocol,
                    metadata=record.metadata,
                    concat=record.concat,
                )
            )

    async def get(self, session_id: str) -> ResumableRecord | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(resumable_uploads).where(R.session_id == session_id)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return ResumableRecord(
            session_id=row["session_id"],
            protocol=row["protocol"],
            metadata=row["metadata"],
            concat=row["concat"],
        )


class SqlUploadLocks:
    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._clock = clock

    async def acquire(self, session_id: str, *, ttl_seconds: float) -> Lease | None:
        holder = str(uuid.uuid4())
        now = self._clock()
        expires_at = now + timedelta(seconds=ttl_seconds)
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(upload_locks)
                .where(L.session_id == session_id, L.expires_at <= now)
                .values(
                    holder=holder,
                    generation=L.generation + 1,
                    expires_at=expires_at,
                    release_requested=False,
                )
            )
            if taken.rowcount == 1:
                generation = await conn.scalar(
                    select(L.generation).where(L.session_id == session_id)
                )
                return Lease(session_id, holder, int(generation or 0))
            held = await conn.scalar(select(L.holder).where(L.session_id == session_id))
        if held is not None:
            return None
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(upload_locks).values(
                        session_id=session_id,
                        holder=holder,
                        generation=1,
                        expires_at=expires_at,
                        release_requested=False,
                    )
                )
        except IntegrityError:
            return None  # another request inserted it first (or the session is gone)
        return Lease(session_id, holder, 1)

    async def renew(self, lease: Lease, *, ttl_seconds: float) -> LeaseState:
        now = self._clock()
        async with self.engine.begin() as conn:
            renewed = await conn.execute(
                update(upload_locks)
                .where(
                    L.session_id == lease.session_id,
                    L.holder == lease.holder,
                    L.expires_at > now,
                )
                .values(expires_at=now + timedelta(seconds=ttl_seconds))
            )
            if renewed.rowcount != 1:
                return LeaseState.LOST
            requested = await conn.scalar(
                select(L.release_requested).where(L.session_id == lease.session_id)
            )
        return LeaseState.RELEASE_REQUESTED if requested else LeaseState.HELD

    async def request_release(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(upload_locks)
                .where(L.session_id == session_id, L.expires_at > self._clock())
                .values(release_requested=True)
            )

    async def release(self, lease: Lease) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(upload_locks)
                .where(L.session_id == lease.session_id, L.holder == lease.holder)
                .values(expires_at=self._clock(), release_requested=False)
            )
