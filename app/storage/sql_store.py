"""SessionStore on SQLAlchemy Core (SQLite or PostgreSQL).

Every state change is one transaction whose first statement updates the session row:
on PostgreSQL that row lock, on SQLite the IMMEDIATE transaction, serialises every
writer of a session, so a chunk record can never slip in after a completion claimed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.notify.outbox import insert_event
from app.storage import leases, sqlite_driver
from app.storage.tables import session_leases, upload_chunks, upload_parts, upload_sessions
from app.uploads.leasing import WORK
from app.uploads.models import SessionState, StoredChunk, UploadSession
from app.uploads.ports import ChunkRecordOutcome, ChunkRecordResult, Lease, OutboxEvent

S = upload_sessions.c
C = upload_chunks.c
L = session_leases.c

_OPEN_STATES = (SessionState.UPLOADING.value, SessionState.COMPLETING.value)
_PURGEABLE_STATES = (
    SessionState.EXPIRED.value,
    SessionState.ABORTED.value,
    SessionState.FAILED.value,
)
# Bound the size of `IN (...)` lists sent in one statement.
_IN_BATCH = 500

# The statements every chunk runs, built once with bound parameters: building a Core
# statement and its cache key anew costs the event loop more CPU than SQLite needs to
# run it, and the chunk path is where request overhead counts (bench/README.md).
_SESSION_BY_ID = select(upload_sessions).where(S.id == bindparam("session_id"))
# A chunk's record adds its bytes to the session's running total (`chunk_bytes`) as the
# first statement of its transaction, which also takes the session row, and reads the
# total back; a replaced chunk's row then goes (its bytes are taken off the total), and
# the record commits only if the total stays within the session's cap: three statements
# per chunk (four when one is replaced), each constant-time whatever the session holds.
_TOUCH_UPLOADING_BASE = (
    update(upload_sessions)
    .where(
        S.id == bindparam("session_id"),
        S.state == SessionState.UPLOADING.value,
        S.expires_at > bindparam("now"),
    )
    .values(
        updated_at=bindparam("now"),
        expires_at=bindparam("new_expiry"),
        chunk_bytes=S.chunk_bytes + bindparam("size_bytes", type_=S.chunk_bytes.type),
    )
)
_TOUCH_UPLOADING = _TOUCH_UPLOADING_BASE.returning(S.chunk_bytes)
# The same, returning the whole session row: a chunk whose session was not read before
# its bytes (`record_chunk`'s `admit`) is checked against the row this transaction holds.
_TOUCH_UPLOADING_SESSION = _TOUCH_UPLOADING_BASE.returning(*upload_sessions.c)
_DELETE_CHUNK_AT = (
    delete(upload_chunks)
    .where(C.session_id == bindparam("session_id"), C.chunk_index == bindparam("index"))
    .returning(C.chunk_index, C.size_bytes, C.sha256, C.file_name)
)
_UNCOUNT_REPLACED = (
    update(upload_sessions)
    .where(S.id == bindparam("session_id"))
    .values(chunk_bytes=S.chunk_bytes - bindparam("replaced_bytes", type_=S.chunk_bytes.type))
)
_INSERT_CHUNK = insert(upload_chunks).values(
    session_id=bindparam("session_id"),
    chunk_index=bindparam("index"),
    size_bytes=bindparam("size_bytes"),
    sha256=bindparam("sha256"),
    file_name=bindparam("file_name"),
    received_at=bindparam("received_at"),
)
# A writer's last record releases its lease in the same transaction, only if still its own.
_RELEASE_HELD = (
    update(session_leases)
    .where(
        L.session_id == bindparam("lease_session_id"),
        L.name == bindparam("lease_name"),
        L.generation == bindparam("lease_generation"),
        L.holder == bindparam("lease_holder"),
    )
    .values(expires_at=leases.LAPSED)
)
_CHUNK_TOTALS = select(func.count(), func.coalesce(func.sum(C.size_bytes), 0)).where(
    C.session_id == bindparam("session_id")
)


class _SqliteChunkPath:
    """The chunk path's statements on SQLite, each call one hand-off to the database
    thread running the whole transaction on its `sqlite3` connection: through
    SQLAlchemy's execution and the async adapter, the same statements cost the event
    loop several times what SQLite needs to run them (bench/README.md, "Per-request
    cost"). Same SQL, same type processing (`sqlite_driver.Prepared`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self.engine = engine
        self.session_by_id = sqlite_driver.Prepared(_SESSION_BY_ID, dialect)
        self.touch = sqlite_driver.Prepared(_TOUCH_UPLOADING, dialect)
        self.touch_session = sqlite_driver.Prepared(_TOUCH_UPLOADING_SESSION, dialect)
        self.release = sqlite_driver.Prepared(_RELEASE_HELD, dialect)
        self.delete_at = sqlite_driver.Prepared(_DELETE_CHUNK_AT, dialect)
        self.uncount = sqlite_driver.Prepared(_UNCOUNT_REPLACED, dialect)
        self.insert = sqlite_driver.Prepared(_INSERT_CHUNK, dialect)
        self.totals = sqlite_driver.Prepared(_CHUNK_TOTALS, dialect)

    async def get(self, session_id: str) -> UploadSession | None:
        raw = await sqlite_driver.run_on_connection(
            self.engine,
            sqlite_driver.fetch_one,
            self.session_by_id.sql,
            self.session_by_id.parameters({"session_id": session_id}),
        )
        return _session(self.session_by_id.row(raw)) if raw is not None else None  # type: ignore[arg-type]

    async def chunk_totals(self, session_id: str) -> tuple[int, int]:
        raw = await sqlite_driver.run_on_connection(
            self.engine,
            sqlite_driver.fetch_one,
            self.totals.sql,
            self.totals.parameters({"session_id": session_id}),
        )
        return (int(raw[0]), int(raw[1])) if raw is not None else (0, 0)

    async def record_chunk(
        self,
        session_id: str,
        chunk: StoredChunk,
        *,
        now: datetime,
        expires_at: datetime,
        max_session_bytes: int,
        release: Lease | None,
        admit: Callable[[UploadSession], None] | None,
        place: Callable[[], None] | None,
        prepare: Callable[[], None] | None = None,
    ) -> ChunkRecordResult:
        touch = self.touch if admit is None else self.touch_session
        key = {"session_id": session_id}
        statements = _SqliteRecord(
            touch=(
                touch.sql,
                touch.parameters(
                    {
                        **key,
                        "now": now,
                        "new_expiry": expires_at,
                        "size_bytes": chunk.size_bytes,
                    }
                ),
            ),
            total_at=touch.keys.index("chunk_bytes"),
            release=(self.release.sql, self.release.parameters(_lease_parameters(release)))
            if release is not None
            else None,
            delete_at=(
                self.delete_at.sql,
                self.delete_at.parameters({**key, "index": chunk.index}),
            ),
            uncount=self.uncount.sql,
            uncount_parameters=self.uncount.parameters,
            size_at=self.delete_at.keys.index("size_bytes"),
            insert=(
                self.insert.sql,
                self.insert.parameters(
                    {
                        **key,
                        "index": chunk.index,
                        "size_bytes": chunk.size_bytes,
                        "sha256": chunk.sha256,
                        "file_name": chunk.file_name,
                        "received_at": now,
                    }
                ),
            ),
            session_by_id=(self.session_by_id.sql, self.session_by_id.parameters(key)),
            max_bytes=max_session_bytes,
            session_id=session_id,
        )
        touched = None
        if admit is not None:
            row = self.touch_session.row

            def touched(raw: Sequence[Any]) -> None:
                admit(_session(row(raw)))  # type: ignore[arg-type]

        outcome, old = await sqlite_driver.run_on_connection(
            self.engine, _record_chunk_sqlite, statements, touched, place, prepare
        )
        replaced = _chunk(self.delete_at.row(old)) if old is not None else None  # type: ignore[arg-type]
        return ChunkRecordResult(outcome, replaced=replaced)


@dataclass(frozen=True)
class _SqliteRecord:
    """A chunk record's statements (SQL, parameters), ready for the database thread."""

    touch: tuple[str, tuple[Any, ...]]
    total_at: int  # the running total's place in the touch's row
    release: tuple[str, tuple[Any, ...]] | None
    delete_at: tuple[str, tuple[Any, ...]]
    uncount: str
    uncount_parameters: Callable[[dict[str, Any]], tuple[Any, ...]]
    size_at: int  # the replaced chunk's size in the delete's row
    insert: tuple[str, tuple[Any, ...]]
    session_by_id: tuple[str, tuple[Any, ...]]
    max_bytes: int
    session_id: str


def _record_chunk_sqlite(
    connection: sqlite3.Connection,
    record: _SqliteRecord,
    touched: Callable[[Sequence[Any]], None] | None,
    place: Callable[[], None] | None,
    prepare: Callable[[], None] | None = None,
) -> tuple[ChunkRecordOutcome, Any]:
    """`SqlSessionStore.record_chunk`'s transaction, run in the database thread.
    `touched`: given the session row the touch returned (it refuses by raising)."""
    if prepare is not None:
        prepare()  # before BEGIN: file work never lengthens the database's write lock
    connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = connection.execute(*record.touch)
        row = cursor.fetchone()
        cursor.close()
        if row is None:
            exists = connection.execute(*record.session_by_id).fetchone() is not None
            connection.rollback()
            return (
                ChunkRecordOutcome.NOT_UPLOADING if exists else ChunkRecordOutcome.MISSING
            ), None
        if touched is not None:
            touched(row)
        if record.release is not None and connection.execute(*record.release).rowcount != 1:
            connection.rollback()
            return ChunkRecordOutcome.LEASE_LOST, None
        total = int(row[record.total_at])
        cursor = connection.execute(*record.delete_at)
        old = cursor.fetchone()
        cursor.close()
        if old is not None:
            replaced_bytes = int(old[record.size_at])
            total -= replaced_bytes
            connection.execute(
                record.uncount,
                record.uncount_parameters(
                    {"session_id": record.session_id, "replaced_bytes": replaced_bytes}
                ),
            )
        if total > record.max_bytes:
            connection.rollback()  # the replaced row stays
            return ChunkRecordOutcome.SESSION_TOO_LARGE, None
        if place is not None:
            place()
        connection.execute(*record.insert)
        connection.commit()
        return ChunkRecordOutcome.RECORDED, old
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


def _in_order(*steps: Callable[[], None] | None) -> None:
    for step in steps:
        if step is not None:
            step()


def _lease_parameters(lease: Lease) -> dict[str, Any]:
    return {
        "lease_session_id": lease.session_id,
        "lease_name": lease.name,
        "lease_generation": lease.generation,
        "lease_holder": lease.holder,
    }


class SqlSessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = _SqliteChunkPath(engine) if engine.dialect.name == "sqlite" else None

    async def create(self, session: UploadSession) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(upload_sessions).values(**_session_row(session)))

    async def get(self, session_id: str) -> UploadSession | None:
        if self._sqlite is not None:
            return await self._sqlite.get(session_id)
        async with self.engine.connect() as conn:
            return await _get(conn, session_id)

    async def list_chunks(self, session_id: str) -> list[StoredChunk]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(upload_chunks).where(C.session_id == session_id).order_by(C.chunk_index)
            )
            return [_chunk(row) for row in rows.mappings()]

    async def record_chunk(
        self,
        session_id: str,
        chunk: StoredChunk,
        *,
        now: datetime,
        expires_at: datetime,
        max_session_bytes: int,
        release: Lease | None = None,
        admit: Callable[[UploadSession], None] | None = None,
        place: Callable[[], None] | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> ChunkRecordResult:
        """`release`: a lease this chunk's writer holds, lapsed in the same transaction
        (the writer's last record): the chunk commits only while the lease is still its
        holder's, so a writer that was replaced records nothing (LEASE_LOST). `admit`,
        `place`, `prepare`: the port's (on SQLite all run in the database thread, in the
        one hand-off of the whole transaction; `prepare` before it begins)."""
        if self._sqlite is not None:
            return await self._sqlite.record_chunk(
                session_id,
                chunk,
                now=now,
                expires_at=expires_at,
                max_session_bytes=max_session_bytes,
                release=release,
                admit=admit,
                place=place,
                prepare=prepare,
            )
        if prepare is not None and place is None:
            await asyncio.to_thread(prepare)
        async with self.engine.begin() as conn:
            parameters = {
                "session_id": session_id,
                "now": now,
                "new_expiry": expires_at,
                "size_bytes": chunk.size_bytes,
            }
            touch = _TOUCH_UPLOADING if admit is None else _TOUCH_UPLOADING_SESSION
            row = (await conn.execute(touch, parameters)).mappings().first()
            if row is None:
                exists = await _get(conn, session_id)
                outcome = (
                    ChunkRecordOutcome.MISSING
                    if exists is None
                    else ChunkRecordOutcome.NOT_UPLOADING
                )
                return ChunkRecordResult(outcome)
            if admit is not None:
                admit(_session(row))
            if (
                release is not None
                and not (await conn.execute(_RELEASE_HELD, _lease_parameters(release))).rowcount
            ):
                await conn.rollback()
                return ChunkRecordResult(ChunkRecordOutcome.LEASE_LOST)
            total = int(row["chunk_bytes"])
            old = (
                (
                    await conn.execute(
                        _DELETE_CHUNK_AT, {"session_id": session_id, "index": chunk.index}
                    )
                )
                .mappings()
                .first()
            )
            if old is not None:
                total -= int(old["size_bytes"])
                await conn.execute(
                    _UNCOUNT_REPLACED,
                    {"session_id": session_id, "replaced_bytes": int(old["size_bytes"])},
                )
            if total > max_session_bytes:
                await conn.rollback()  # the replaced row stays
                return ChunkRecordResult(ChunkRecordOutcome.SESSION_TOO_LARGE)
            if place is not None:
                # `prepare` in the same hand-off: a row lock, not the database's, is held.
                await asyncio.to_thread(_in_order, prepare, place)
            await conn.execute(
                _INSERT_CHUNK,
                {
                    "session_id": session_id,
                    "index": chunk.index,
                    "size_bytes": chunk.size_bytes,
                    "sha256": chunk.sha256,
                    "file_name": chunk.file_name,
                    "received_at": now,
                },
            )
            return ChunkRecordResult(
                ChunkRecordOutcome.RECORDED, replaced=_chunk(old) if old is not None else None
            )

    async def claim_completion(
        self, session_id: str, *, now: datetime, lease_expires_at: datetime
    ) -> bool:
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                update(upload_sessions)
                .where(
                    S.id == session_id,
                    S.state == SessionState.UPLOADING.value,
                    S.expires_at > now,
                )
                .values(
                    state=SessionState.COMPLETING.value,
                    lease_expires_at=lease_expires_at,
                    updated_at=now,
                )
            )
            if claimed.rowcount == 1:
                return True
            # Already completing: whoever holds (or takes over) the work lease finishes it.
            state = await conn.scalar(select(S.state).where(S.id == session_id))
            return bool(state == SessionState.COMPLETING.value)

    async def remember_multipart_upload(
        self,
        session_id: str,
        *,
        object_key: str,
        upload_id: str | None,
        lease: Lease | None = None,
    ) -> bool:
        async with self.engine.begin() as conn:
            if lease is not None and not await leases.still_held(conn, lease):
                return False  # taken over: the row names the new holder's upload
            await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id)
                .values(object_key=object_key, multipart_upload_id=upload_id)
            )
        return True

    async def finish_completion(
        self,
        session_id: str,
        *,
        now: datetime,
        result: dict[str, Any],
        event: OutboxEvent | None = None,
        lease: Lease | None = None,
        total_chunks: int | None = None,
    ) -> bool:
        async with self.engine.begin() as conn:
            # Fenced: a holder whose lease was taken over must not commit (first
            # statement, so on PostgreSQL the lease row stays locked until we commit).
            if lease is not None and not await leases.still_held(conn, lease):
                return False
            finished = await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id, S.state == SessionState.COMPLETING.value)
                .values(
                    state=SessionState.COMPLETED.value,
                    result=result,
                    updated_at=now,
                    lease_expires_at=None,
                    multipart_upload_id=None,
                    total_chunks=func.coalesce(total_chunks, S.total_chunks),
                )
            )
            if finished.rowcount != 1:
                return False
            # A completed session keeps only its row (the result, the chunk count): its
            # chunk and part rows would otherwise grow without bound at fleet scale.
            await conn.execute(delete(upload_chunks).where(C.session_id == session_id))
            await conn.execute(delete(upload_parts).where(upload_parts.c.session_id == session_id))
            # The event commits with the state change or not at all.
            if event is not None:
                await insert_event(conn, event)
            await leases.delete_for(conn, [session_id])
            return True

    async def release_completion(
        self, session_id: str, *, now: datetime, lease: Lease | None = None
    ) -> None:
        async with self.engine.begin() as conn:
            if lease is not None and not await leases.still_held(conn, lease):
                return  # taken over: the new holder decides
            await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id, S.state == SessionState.COMPLETING.value)
                .values(
                    state=SessionState.UPLOADING.value,
                    updated_at=now,
                    lease_expires_at=None,
                    multipart_upload_id=None,
                )
            )

    async def set_state(
        self,
        session_id: str,
        *,
        now: datetime,
        state: SessionState,
        only_from: Sequence[SessionState],
    ) -> bool:
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id, S.state.in_([s.value for s in only_from]))
                .values(state=state.value, updated_at=now)
            )
            return bool(changed.rowcount == 1)

    # --- open-session limit --------------------------------------------------------
    async def create_within_limit(
        self, session: UploadSession, *, max_open: int, now: datetime
    ) -> bool:
        """Insert the session unless its owner already has `max_open` open ones.
        Count and insert share one transaction that holds a per-owner lock, so
        concurrent inits cannot both slip under the limit."""
        async with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _owner_lock(session)}
                )
            # (On SQLite every transaction is BEGIN IMMEDIATE: already one writer at a time.)
            open_count = await conn.scalar(
                select(func.count())
                .select_from(upload_sessions)
                .where(
                    S.owner_sub == session.owner_sub,
                    or_(
                        S.state == SessionState.COMPLETING.value,
                        and_(S.state == SessionState.UPLOADING.value, S.expires_at > now),
                    ),
                )
            )
            if int(open_count or 0) >= max_open:
                return False
            await conn.execute(insert(upload_sessions).values(**_session_row(session)))
            return True

    async def staged_bytes_of(self, owner_sub: str) -> int:
        """Bytes of the chunks recorded for the owner's uploading and completing
        sessions: what the owner holds in staging (the per-user staging quota)."""
        async with self.engine.connect() as conn:
            total = await conn.scalar(
                select(func.coalesce(func.sum(C.size_bytes), 0))
                .select_from(upload_chunks.join(upload_sessions, C.session_id == S.id))
                .where(
                    S.owner_sub == owner_sub,
                    S.state.in_([SessionState.UPLOADING.value, SessionState.COMPLETING.value]),
                )
            )
        return int(total or 0)

    # --- janitor queries: each state change is guarded, so replicas may race ---------
    async def list_stale_sessions(
        self, *, now: datetime, lease_lapsed_before: datetime, limit: int
    ) -> list[UploadSession]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(upload_sessions)
                .where(
                    or_(
                        and_(S.state == SessionState.UPLOADING.value, S.expires_at <= now),
                        and_(
                            S.state == SessionState.COMPLETING.value,
                            S.lease_expires_at < lease_lapsed_before,
                        ),
                    )
                )
                .order_by(S.expires_at)
                .limit(limit)
            )
            return [_session(row) for row in rows.mappings()]

    async def expire_session(self, session_id: str, *, now: datetime) -> UploadSession | None:
        """uploading and past its expiry -> expired. Returns the row as it was, or None
        when another writer (a chunk, a complete, another janitor) got there first."""
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(upload_sessions)
                .where(
                    S.id == session_id,
                    S.state == SessionState.UPLOADING.value,
                    S.expires_at <= now,
                )
                .values(state=SessionState.EXPIRED.value, updated_at=now)
            )
            if changed.rowcount != 1:
                return None
            return await _get(conn, session_id)

    async def release_stale_completion(
        self, session_id: str, *, now: datetime, lease_lapsed_before: datetime
    ) -> UploadSession | None:
        """completing with a long-lapsed lease -> uploading (the client may still retry;
        expiry then runs its normal course). Returns the row as it was before."""
        async with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # The lease row first, locked to the end: a renewal (the holder's check
                # before S3's commit) either committed before (and the update below sees
                # it live) or waits and then finds the lease taken. SQLite's writers are
                # one at a time already.
                await conn.execute(
                    select(L.generation)
                    .where(L.session_id == session_id, L.name == WORK)
                    .with_for_update()
                )
            before = await _get(conn, session_id)
            changed = await conn.execute(
                update(upload_sessions)
                .where(
                    S.id == session_id,
                    S.state == SessionState.COMPLETING.value,
                    S.lease_expires_at < lease_lapsed_before,
                    # A completion still renewing its lease is alive, however long it runs.
                    ~select(L.session_id)
                    .where(
                        L.session_id == S.id,
                        L.name == WORK,
                        L.expires_at >= lease_lapsed_before,
                    )
                    .exists(),
                )
                .values(
                    state=SessionState.UPLOADING.value,
                    updated_at=now,
                    lease_expires_at=None,
                    multipart_upload_id=None,
                )
            )
            if changed.rowcount != 1:
                return None
            # Take the lapsed lease from its holder (a new generation, left lapsed): were
            # it only stalled, its renewal before S3's commit now fails, so it stores
            # nothing over what a retry will store.
            await conn.execute(
                update(session_leases)
                .where(L.session_id == session_id, L.name == WORK)
                .values(generation=L.generation + 1, holder="", expires_at=leases.LAPSED)
            )
            return before

    async def open_session_ids(self, session_ids: Collection[str]) -> set[str]:
        """Those of `session_ids` that are uploading or completing (whatever their expiry:
        an overdue session's data goes with its expiry, not before)."""
        found: set[str] = set()
        ids = list(session_ids)
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_BATCH):
                rows = await conn.execute(
                    select(S.id).where(
                        S.id.in_(ids[start : start + _IN_BATCH]), S.state.in_(_OPEN_STATES)
                    )
                )
                found.update(str(row[0]) for row in rows)
        return found

    async def chunk_file_names(self, session_ids: Collection[str]) -> set[tuple[str, str]]:
        """(session id, file name) of every chunk recorded for these sessions."""
        found: set[tuple[str, str]] = set()
        ids = list(session_ids)
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_BATCH):
                rows = await conn.execute(
                    select(C.session_id, C.file_name).where(
                        C.session_id.in_(ids[start : start + _IN_BATCH])
                    )
                )
                found.update((str(row[0]), str(row[1])) for row in rows)
        return found

    async def open_multipart_upload_ids(self) -> set[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(S.multipart_upload_id).where(
                    S.state.in_(_OPEN_STATES), S.multipart_upload_id.is_not(None)
                )
            )
            return {str(row[0]) for row in rows}

    async def purge_closed_sessions(
        self,
        *,
        updated_before: datetime,
        limit: int,
        completed_updated_before: datetime | None = None,
    ) -> int:
        """Delete expired, aborted and failed session records (and their chunk records)
        untouched since `updated_before`, and completed ones untouched since
        `completed_updated_before` (None: completed ones stay, answering repeated
        completes and holding where the file went). Each state is one range of the
        (state, updated_at) index."""
        # One range of the (state, updated_at) index per kind: an OR of both would make
        # PostgreSQL scan the table (bench/README.md, "Ten million sessions").
        kinds = [S.state.in_(_PURGEABLE_STATES) & (S.updated_at < updated_before)]
        if completed_updated_before is not None:
            kinds.append(
                (S.state == SessionState.COMPLETED.value)
                & (S.updated_at < completed_updated_before)
            )
        async with self.engine.begin() as conn:
            ids: list[str] = []
            for purgeable in kinds:
                rows = await conn.execute(select(S.id).where(purgeable).limit(limit - len(ids)))
                ids += [str(row[0]) for row in rows]
                if len(ids) >= limit:
                    break
            if not ids:
                return 0
            await conn.execute(delete(upload_chunks).where(C.session_id.in_(ids)))
            await conn.execute(delete(upload_parts).where(upload_parts.c.session_id.in_(ids)))
            await leases.delete_for(conn, ids)
            deleted = await conn.execute(delete(upload_sessions).where(S.id.in_(ids), or_(*kinds)))
            return int(deleted.rowcount or 0)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def chunk_totals(self, session_id: str) -> tuple[int, int]:
        if self._sqlite is not None:
            return await self._sqlite.chunk_totals(session_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(_CHUNK_TOTALS, {"session_id": session_id})).first()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    async def set_total_size(self, session_id: str, total_size: int) -> bool:
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id, S.total_size.is_(None))
                .values(total_size=total_size)
            )
            return changed.rowcount == 1


async def _get(conn: AsyncConnection, session_id: str) -> UploadSession | None:
    row = (await conn.execute(_SESSION_BY_ID, {"session_id": session_id})).mappings().first()
    return _session(row) if row is not None else None


def _owner_lock(session: UploadSession) -> int:
    digest = hashlib.sha256(b"open-sessions:" + session.owner_sub.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _session_row(session: UploadSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "owner_sub": session.owner_sub,
        "main_service_file_id": session.main_service_file_id,
        "original_file_name": session.original_file_name,
        "state": session.state.value,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "expires_at": session.expires_at,
        "total_size": session.total_size,
        "total_chunks": session.total_chunks,
        "chunk_size": session.chunk_size,
        "sha256": session.sha256,
        "content_type": session.content_type,
        "lease_expires_at": session.lease_expires_at,
        "object_key": session.object_key,
        "multipart_upload_id": session.multipart_upload_id,
        "result": session.result,
    }


def _session(row: RowMapping) -> UploadSession:
    return UploadSession(
        id=row["id"],
        owner_sub=row["owner_sub"],
        main_service_file_id=int(row["main_service_file_id"]),
        original_file_name=row["original_file_name"],
        state=SessionState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        total_size=row["total_size"],
        total_chunks=row["total_chunks"],
        chunk_size=row["chunk_size"],
        sha256=row["sha256"],
        content_type=row["content_type"],
        lease_expires_at=row["lease_expires_at"],
        object_key=row["object_key"],
        multipart_upload_id=row["multipart_upload_id"],
        result=row["result"],
    )


def _chunk(row: RowMapping) -> StoredChunk:
    return StoredChunk(
        index=int(row["chunk_index"]),
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        file_name=row["file_name"],
    )
