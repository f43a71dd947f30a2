"""Adapters for the resumable front doors: their protocol records, and the per-upload
writer lease (`UploadLocks`).

The writer lease is the session's `append` lease in the shared `session_leases` rows
(`app.storage.leases`, the same fenced leases eager flush and completion hold): taking it
is one guarded UPDATE of a lapsed row or an INSERT whose primary key makes a second taker
fail, so two replicas never both hold it; each acquisition raises its generation. Expiry
is short (seconds) and the holder renews it while its request runs, so a killed process
blocks an upload for seconds, not for the long timeouts of a dead TCP connection. Times
come from the caller's clock; replicas are assumed to agree on time within a fraction of
the TTL.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.leases import SqlLeaseStore
from app.storage.tables import resumable_uploads
from app.uploads.models import utc_now
from app.uploads.ports import Lease, LeaseState, ResumableRecord

R = resumable_uploads.c


# Records never change once written (they go with their session; a final upload's parts
# are written with it), so each process keeps the ones it read last: a PATCH then costs
# no read of its own. A record of a session since purged is harmless: the session's own
# read (every request makes it) finds none.
_CACHED_RECORDS = 4096


class SqlResumableRecords:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._cache: OrderedDict[str, ResumableRecord] = OrderedDict()

    def _remember(self, record: ResumableRecord) -> ResumableRecord:
        self._cache[record.session_id] = record
        self._cache.move_to_end(record.session_id)
        while len(self._cache) > _CACHED_RECORDS:
            self._cache.popitem(last=False)
        return record

    async def create(self, record: ResumableRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(resumable_uploads).values(
                    session_id=record.session_id,
                    protocol=record.protocol,
                    metadata=record.metadata,
                    concat=record.concat,
                    concat_parts=" ".join(record.parts) or None,
                )
            )

    async def get(self, session_id: str) -> ResumableRecord | None:
        cached = self._cache.get(session_id)
        if cached is not None:
            self._cache.move_to_end(session_id)
            return cached
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(resumable_uploads).where(R.session_id == session_id)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return self._remember(
            ResumableRecord(
                session_id=row["session_id"],
                protocol=row["protocol"],
                metadata=row["metadata"],
                concat=row["concat"],
                parts=tuple((row["concat_parts"] or "").split()),
            )
        )


APPEND_LEASE = "append"


class SqlUploadLocks:
    def __init__(self, leases: SqlLeaseStore, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.leases = leases
        self._clock = clock

    async def acquire(self, session_id: str, *, ttl_seconds: float) -> Lease | None:
        return await self.leases.acquire(
            session_id,
            APPEND_LEASE,
            holder=str(uuid.uuid4()),
            now=self._clock(),
            ttl_seconds=ttl_seconds,
        )

    async def renew(self, lease: Lease, *, ttl_seconds: float) -> LeaseState:
        renewed = await self.leases.renew(lease, now=self._clock(), ttl_seconds=ttl_seconds)
        if renewed is None:
            return LeaseState.LOST
        if await self.leases.release_requested(lease):
            return LeaseState.RELEASE_REQUESTED
        return LeaseState.HELD

    async def request_release(self, session_id: str) -> None:
        await self.leases.request_release(session_id, APPEND_LEASE, now=self._clock())

    async def release(self, lease: Lease) -> None:
        await self.leases.release(lease, now=self._clock())
