"""PartStore on SQLAlchemy Core: the multipart parts eager flushing already sent to S3.

A part row is written only after S3 acknowledged the part, and always names the
multipart upload it belongs to, so rows of an aborted upload are never mistaken for
parts of a newer one. Rows go with their session (ON DELETE CASCADE). A row may carry the
file's SHA-256 state after its part and the layout that state holds for (hex; see
app.uploads.eager): written in the same fenced statement as the part itself.

On SQLite, `list_parts` and `record_part` (a pass lists the parts, then records each part
it sends) run as one hand-off to the database thread each (`_SqlitePartPath`, the way
the chunk path does in sql_store): through SQLAlchemy's generic async path a fenced
record took five (begin, lease check, delete, insert, commit). Same SQL, same type
processing (`sqlite_driver.Prepared`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage import leases, sqlite_driver
from app.storage.tables import session_leases, upload_parts, upload_sessions
from app.uploads.eager import CoveredChunk, FlushedPart, HashCheckpoint
from app.uploads.models import SessionState
from app.uploads.ports import Lease

P = upload_parts.c
S = upload_sessions.c
L = session_leases.c

_LIST_PARTS = (
    select(upload_parts)
    .where(P.session_id == bindparam("session_id"), P.upload_id == bindparam("upload_id"))
    .order_by(P.part_number)
)
_LEASE_HELD = select(L.generation).where(
    L.session_id == bindparam("lease_session_id"),
    L.name == bindparam("lease_name"),
    L.generation == bindparam("lease_generation"),
    L.holder == bindparam("lease_holder"),
)
_DELETE_PART = delete(upload_parts).where(
    P.session_id == bindparam("session_id"), P.part_number == bindparam("part_number")
)
_INSERT_PART = insert(upload_parts).values(
    {column: bindparam(column.key, type_=column.type) for column in upload_parts.columns}
)


class _SqlitePartPath:
    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self.engine = engine
        self.list = sqlite_driver.Prepared(_LIST_PARTS, dialect)
        self.lease_held = sqlite_driver.Prepared(_LEASE_HELD, dialect)
        self.delete = sqlite_driver.Prepared(_DELETE_PART, dialect)
        self.insert = sqlite_driver.Prepared(_INSERT_PART, dialect)

    async def list_parts(self, session_id: str, upload_id: str) -> list[FlushedPart]:
        rows = await sqlite_driver.run_on_connection(
            self.engine,
            _fetch_all,
            self.list.sql,
            self.list.parameters({"session_id": session_id, "upload_id": upload_id}),
        )
        return [_part(self.list.row(raw)) for raw in rows]

    async def record_part(self, values: dict[str, Any], lease: Lease | None) -> bool:
        check = (
            (
                self.lease_held.sql,
                self.lease_held.parameters(
                    {
                        "lease_session_id": lease.session_id,
                        "lease_name": lease.name,
                        "lease_generation": lease.generation,
                        "lease_holder": lease.holder,
                    }
                ),
            )
            if lease is not None
            else None
        )
        remove = (self.delete.sql, self.delete.parameters(values))
        add = (self.insert.sql, self.insert.parameters(values))
        recorded: bool = await sqlite_driver.run_on_connection(
            self.engine, _record_part_sqlite, check, remove, add
        )
        return recorded


def _fetch_all(connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> Any:
    cursor = connection.execute(sql, parameters)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _record_part_sqlite(
    connection: sqlite3.Connection,
    check: tuple[str, tuple[Any, ...]] | None,
    remove: tuple[str, tuple[Any, ...]],
    add: tuple[str, tuple[Any, ...]],
) -> bool:
    """`SqlPartStore.record_part`'s transaction, run in the database thread."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        if check is not None:
            cursor = connection.execute(*check)
            held = cursor.fetchone() is not None
            cursor.close()
            if not held:
                connection.rollback()
                return False
        connection.execute(*remove).close()
        connection.execute(*add).close()
        connection.commit()
        return True
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


class SqlPartStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sqlite = _SqlitePartPath(engine) if engine.dialect.name == "sqlite" else None

    async def list_parts(self, session_id: str, upload_id: str) -> list[FlushedPart]:
        if self._sqlite is not None:
            return await self._sqlite.list_parts(session_id, upload_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                _LIST_PARTS, {"session_id": session_id, "upload_id": upload_id}
            )
            return [_part(row) for row in rows.mappings()]

    async def record_part(
        self,
        session_id: str,
        upload_id: str,
        part: FlushedPart,
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> bool:
        values = {
            "session_id": session_id,
            "part_number": part.part_number,
            "upload_id": upload_id,
            "size_bytes": part.size_bytes,
            "etag": part.etag,
            "covers": [list(item) for item in part.covers],
            "uploaded_at": now,
            "layout_sha256": part.checkpoint.layout_sha256 if part.checkpoint else None,
            "sha256_state": part.checkpoint.state.hex() if part.checkpoint else None,
        }
        if self._sqlite is not None:
            return await self._sqlite.record_part(values, lease)
        async with self.engine.begin() as conn:
            # A flusher whose lease was taken over must not overwrite the new holder's row.
            if lease is not None and not await leases.still_held(conn, lease):
                return False
            await conn.execute(_DELETE_PART, values)
            await conn.execute(_INSERT_PART, values)
            return True

    async def clear_parts(self, session_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(upload_parts).where(P.session_id == session_id))

    async def adopt_upload(
        self, session_id: str, *, object_key: str, upload_id: str, content_type: str
    ) -> bool:
        async with self.engine.begin() as conn:
            adopted = await conn.execute(
                update(upload_sessions)
                .where(
                    S.id == session_id,
                    S.state == SessionState.UPLOADING.value,
                    S.multipart_upload_id.is_(None),
                )
                .values(
                    object_key=object_key,
                    multipart_upload_id=upload_id,
                    eager_upload={"upload_id": upload_id, "content_type": content_type},
                )
            )
            return bool(adopted.rowcount == 1)

    async def created_content_type(self, session_id: str, upload_id: str) -> str | None:
        async with self.engine.connect() as conn:
            created = await conn.scalar(select(S.eager_upload).where(S.id == session_id))
        # Keyed by upload id: an upload the plain path started later (and named on the
        # same row) is not one the flusher created.
        if isinstance(created, dict) and created.get("upload_id") == upload_id:
            return str(created["content_type"])
        return None


def _part(row: Mapping[Any, Any]) -> FlushedPart:
    return FlushedPart(
        part_number=int(row["part_number"]),
        size_bytes=int(row["size_bytes"]),
        etag=row["etag"],
        covers=tuple(CoveredChunk(*item) for item in row["covers"]),
        checkpoint=_checkpoint(row["layout_sha256"], row["sha256_state"]),
    )


def _checkpoint(layout_sha256: str | None, state_hex: str | None) -> HashCheckpoint | None:
    if layout_sha256 is None or state_hex is None:
        return None
    try:
        return HashCheckpoint(layout_sha256, bytes.fromhex(state_hex))
    except ValueError:
        return None  # unreadable: the prefix is hashed again, as without a state
