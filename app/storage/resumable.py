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

import dataclasses
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import SessionNotFound
from app.storage import sqlite_driver
from app.storage.leases import SqlLeaseStore
from app.storage.sql_store import _CHUNK_TOTALS, _SESSION_BY_ID, _session
from app.storage.tables import resumable_uploads
from app.uploads.models import UploadSession, utc_now
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


@dataclasses.dataclass(frozen=True)
class OpenedUpload:
    """An upload as an appending request found it (`SqlUploadLocks.open`): the session,
    checked; the writer lease if it was free (taken at `taken_at`, `time.monotonic()`);
    and, read under that lease, the upload's chunk count and bytes."""

    session: UploadSession
    lease: Lease | None = None
    taken_at: float = 0.0
    totals: tuple[int, int] | None = None


def _open_upload(
    connection: sqlite3.Connection,
    session_read: tuple[str, tuple[Any, ...]],
    admit: Callable[[Any], UploadSession],
    acquire: tuple[str, tuple[Any, ...]],
    totals: tuple[str, tuple[Any, ...]],
) -> tuple[UploadSession, Any, Any]:
    """In the database thread, one IMMEDIATE transaction: the session's row, `admit`
    (which refuses by raising: then nothing is taken), the lease's upsert, and only if
    it took the lease, the chunk totals."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        session = admit(sqlite_driver.fetch_one(connection, *session_read))
        taken = sqlite_driver.fetch_one(connection, *acquire)
        held = sqlite_driver.fetch_one(connection, *totals) if taken is not None else None
        connection.commit()
        return session, taken, held
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


class SqlUploadLocks:
    def __init__(self, leases: SqlLeaseStore, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.leases = leases
        self._clock = clock
        engine = leases.engine
        self._sqlite: tuple[sqlite_driver.Prepared, sqlite_driver.Prepared] | None = (
            (
                sqlite_driver.Prepared(_SESSION_BY_ID, engine.dialect),
                sqlite_driver.Prepared(_CHUNK_TOTALS, engine.dialect),
            )
            if engine.dialect.name == "sqlite"
            else None
        )

    async def open(
        self,
        session_id: str,
        *,
        ttl_seconds: float,
        check: Callable[[UploadSession], None],
    ) -> OpenedUpload | None:
        """An appending request's first three reads in one hand-off to the database
        thread (SQLite; None elsewhere: the caller makes them one by one): the session,
        `check`ed as `UploadService.check_can_receive` checks it (its refusals raise,
        before anything is taken), the writer lease if it is free, and under it the
        upload's chunk totals. A lease held by another request is left to the caller's
        usual wait (`lease` None)."""
        prepared = self._sqlite
        if prepared is None:
            return None
        acquire = self.leases.sqlite_acquire(
            session_id,
            APPEND_LEASE,
            holder=os.urandom(16).hex(),  # unique, as a uuid4, cheaper
            now=self._clock(),
            ttl_seconds=ttl_seconds,
        )
        if acquire is None:
            return None
        by_id, totals = prepared
        sql, parameters, lease = acquire

        def admit(raw: Any) -> UploadSession:
            if raw is None:
                raise SessionNotFound()
            session = _session(by_id.row(raw))  # type: ignore[arg-type]
            check(session)
            return session

        started = time.monotonic()  # the lease's age counts from before it was taken
        session, taken, held = await sqlite_driver.run_on_connection(
            self.leases.engine,
            _open_upload,
            (by_id.sql, by_id.parameters({"session_id": session_id})),
            admit,
            (sql, parameters),
            (totals.sql, totals.parameters({"session_id": session_id})),
        )
        if taken is None:
            return OpenedUpload(session)
        return OpenedUpload(
            session,
            dataclasses.replace(lease, generation=int(taken[0])),
            started,
            (int(held[0]), int(held[1])) if held is not None else (0, 0),
        )

    async def acquire(self, session_id: str, *, ttl_seconds: float) -> Lease | None:
        return await self.leases.acquire(
            session_id,
            APPEND_LEASE,
            holder=os.urandom(16).hex(),  # unique, as a uuid4, cheaper
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
