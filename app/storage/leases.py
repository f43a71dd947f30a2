"""LeaseStore on SQLAlchemy Core: one row per (session, lease name) in `session_leases`.

Acquiring is one statement: insert the row at generation 1, or else (on conflict) take it
over with a guarded update (`expires_at <= now`) that raises the generation, returning
the generation taken or nothing. On PostgreSQL the conflicting row's lock makes two
takers queue and the second find the lease live; on SQLite every transaction is
IMMEDIATE, so writers are already one at a time. Releasing lapses
the row instead of deleting it: a deleted row would restart at generation 1 and let an
old holder's token match again. Rows go with their session (`delete_for`), in the
transaction that completes or purges it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app.storage import sqlite_driver
from app.storage.tables import session_leases
from app.uploads.ports import Lease

L = session_leases.c
# What a released lease's expiry is set to: long past, whatever the clocks say.
LAPSED = datetime(2000, 1, 1, tzinfo=UTC)


def _acquire_statement(dialect_name: str) -> Any:
    """Insert the lease at generation 1, or take a lapsed one over (a new generation);
    returns the generation taken, or no row while another holder's lease runs."""
    insert: Any = sqlite.insert
    if dialect_name == "postgresql":
        # Here, not at import: a service on SQLite never loads the PostgreSQL dialect (~2 MB).
        from sqlalchemy.dialects import postgresql

        insert = postgresql.insert
    upsert = insert(session_leases).values(
        session_id=bindparam("session_id"),
        name=bindparam("name"),
        holder=bindparam("holder"),
        generation=1,
        expires_at=bindparam("expires_at"),
        release_requested=False,
    )
    return upsert.on_conflict_do_update(
        index_elements=[L.session_id, L.name],
        set_={
            "holder": upsert.excluded.holder,
            "generation": L.generation + 1,
            "expires_at": upsert.excluded.expires_at,
            "release_requested": False,
        },
        where=L.expires_at <= bindparam("now"),
    ).returning(L.generation)


def _write_returning_one(
    connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]
) -> Any:
    """One writing statement in its own IMMEDIATE transaction, in the database thread."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = connection.execute(sql, parameters)
        row = cursor.fetchone()
        cursor.close()
        connection.commit()
        return row
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


class SqlLeaseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # On SQLite a lease is taken in one hand-off to the database thread (sqlite_driver).
        self._sqlite_acquire = (
            sqlite_driver.Prepared(_acquire_statement("sqlite"), engine.dialect)
            if engine.dialect.name == "sqlite"
            else None
        )

    def sqlite_acquire(
        self, session_id: str, name: str, *, holder: str, now: datetime, ttl_seconds: float
    ) -> tuple[str, tuple[Any, ...], Lease] | None:
        """On SQLite, the acquiring statement for a caller that runs it inside a
        transaction of its own (one hand-off with other reads): its SQL, its parameters,
        and the lease it takes if it returns a row (whose generation is the row's).
        None on other databases."""
        prepared = self._sqlite_acquire
        if prepared is None:
            return None
        values = _acquire_values(session_id, name, holder, now, ttl_seconds)
        lease = Lease(session_id, name, holder, 0, values["expires_at"])
        return prepared.sql, prepared.parameters(values), lease

    async def acquire(
        self, session_id: str, name: str, *, holder: str, now: datetime, ttl_seconds: float
    ) -> Lease | None:
        values = _acquire_values(session_id, name, holder, now, ttl_seconds)
        expires_at = values["expires_at"]
        if self._sqlite_acquire is not None:
            prepared = self._sqlite_acquire
            row = await sqlite_driver.run_on_connection(
                self.engine, _write_returning_one, prepared.sql, prepared.parameters(values)
            )
            generation = row[0] if row is not None else None
        else:
            async with self.engine.begin() as conn:
                generation = await conn.scalar(_acquire_statement("postgresql"), values)
        if generation is None:
            return None  # another holder's lease is running
        return Lease(session_id, name, holder, int(generation), expires_at)

    async def renew(self, lease: Lease, *, now: datetime, ttl_seconds: float) -> Lease | None:
        expires_at = now + timedelta(seconds=ttl_seconds)
        async with self.engine.begin() as conn:
            renewed = await conn.execute(
                update(session_leases)
                # A released lease stays released: a renewal racing the release (or a
                # holder's last write that released it) must not bring it back.
                .where(held_by(lease), L.expires_at > LAPSED)
                .values(expires_at=expires_at)
            )
        if renewed.rowcount != 1:
            return None
        return Lease(lease.session_id, lease.name, lease.holder, lease.generation, expires_at)

    async def release(self, lease: Lease, *, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(session_leases).where(held_by(lease)).values(expires_at=LAPSED)
            )

    async def request_release(self, session_id: str, name: str, *, now: datetime) -> None:
        """Flag a running lease as wanted by someone else; its holder reads the flag with
        `release_requested` and may let go early. A lapsed lease needs no flag."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(session_leases)
                .where(L.session_id == session_id, L.name == name, L.expires_at > now)
                .values(release_requested=True)
            )

    async def release_requested(self, lease: Lease) -> bool:
        async with self.engine.connect() as conn:
            return bool(await conn.scalar(select(L.release_requested).where(held_by(lease))))

    async def current(self, session_id: str, name: str) -> Lease | None:
        async with self.engine.connect() as conn:
            return await _read(conn, session_id, name)


def _acquire_values(
    session_id: str, name: str, holder: str, now: datetime, ttl_seconds: float
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "name": name,
        "holder": holder,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "now": now,
    }


def held_by(lease: Lease) -> ColumnElement[bool]:
    """The row is still this holder's: the condition of every fenced write."""
    return and_(
        L.session_id == lease.session_id,
        L.name == lease.name,
        L.generation == lease.generation,
        L.holder == lease.holder,
    )


async def still_held(conn: AsyncConnection, lease: Lease) -> bool:
    """Inside a writer's transaction: is the lease still ours? On PostgreSQL the row is
    locked until the transaction ends, so no one can take it over before the write
    commits (a taker's update waits, then finds the session's new state)."""
    query = select(L.generation).where(held_by(lease))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return (await conn.scalar(query)) is not None


async def delete_for(conn: AsyncConnection, session_ids: Collection[str]) -> None:
    if session_ids:
        await conn.execute(delete(session_leases).where(L.session_id.in_(list(session_ids))))


async def _read(conn: AsyncConnection, session_id: str, name: str) -> Lease | None:
    row = (
        (
            await conn.execute(
                select(session_leases).where(L.session_id == session_id, L.name == name)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return Lease(
        row["session_id"], row["name"], row["holder"], int(row["generation"]), row["expires_at"]
    )
