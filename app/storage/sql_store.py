"""SessionStore on SQLAlchemy Core (SQLite or PostgreSQL).

Every state change is one transaction whose first statement updates the session row:
on PostgreSQL that row lock, on SQLite the IMMEDIATE transaction, serialises every
writer of a session, so a chunk record can never slip in after a completion claimed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.notify.outbox import insert_event
from app.storage.tables import upload_chunks, upload_sessions
from app.uploads.models import SessionState, StoredChunk, UploadSession
from app.uploads.ports import ChunkRecordOutcome, ChunkRecordResult, OutboxEvent

S = upload_sessions.c
C = upload_chunks.c


class SqlSessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, session: UploadSession) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(upload_sessions).values(**_session_row(session)))

    async def get(self, session_id: str) -> UploadSession | None:
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
    ) -> ChunkRecordResult:
        async with self.engine.begin() as conn:
            touched = await conn.execute(
                update(upload_sessions)
                .where(
                    S.id == session_id, S.state == SessionState.UPLOADING.value, S.expires_at > now
                )
                .values(updated_at=now, expires_at=expires_at)
            )
            if touched.rowcount != 1:
                exists = await _get(conn, session_id)
                outcome = (
                    ChunkRecordOutcome.MISSING
                    if exists is None
                    else ChunkRecordOutcome.NOT_UPLOADING
                )
                return ChunkRecordResult(outcome)
            others = await conn.scalar(
                select(func.coalesce(func.sum(C.size_bytes), 0)).where(
                    C.session_id == session_id, C.chunk_index != chunk.index
                )
            )
            if int(others or 0) + chunk.size_bytes > max_session_bytes:
                await conn.rollback()
                return ChunkRecordResult(ChunkRecordOutcome.SESSION_TOO_LARGE)
            old = (
                (
                    await conn.execute(
                        select(upload_chunks).where(
                            C.session_id == session_id, C.chunk_index == chunk.index
                        )
                    )
                )
                .mappings()
                .first()
            )
            if old is not None:
                await conn.execute(
                    delete(upload_chunks).where(
                        C.session_id == session_id, C.chunk_index == chunk.index
                    )
                )
            await conn.execute(
                insert(upload_chunks).values(
                    session_id=session_id,
                    chunk_index=chunk.index,
                    size_bytes=chunk.size_bytes,
                    sha256=chunk.sha256,
                    file_name=chunk.file_name,
                    received_at=now,
                )
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
                    or_(
                        and_(S.state == SessionState.UPLOADING.value, S.expires_at > now),
                        and_(S.state == SessionState.COMPLETING.value, S.lease_expires_at < now),
                    ),
                )
                .values(
                    state=SessionState.COMPLETING.value,
                    lease_expires_at=lease_expires_at,
                    updated_at=now,
                )
            )
            return bool(claimed.rowcount == 1)

    async def remember_multipart_upload(
        self, session_id: str, *, object_key: str, upload_id: str | None
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id)
                .values(object_key=object_key, multipart_upload_id=upload_id)
            )

    async def finish_completion(
        self,
        session_id: str,
        *,
        now: datetime,
        result: dict[str, Any],
        event: OutboxEvent | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            finished = await conn.execute(
                update(upload_sessions)
                .where(S.id == session_id, S.state == SessionState.COMPLETING.value)
                .values(
                    state=SessionState.COMPLETED.value,
                    result=result,
                    updated_at=now,
                    lease_expires_at=None,
                    multipart_upload_id=None,
                )
            )
            # The event commits with the state change or not at all.
            if event is not None and finished.rowcount == 1:
                await insert_event(conn, event)

    async def release_completion(self, session_id: str, *, now: datetime) -> None:
        async with self.engine.begin() as conn:
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

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


async def _get(conn: AsyncConnection, session_id: str) -> UploadSession | None:
    row = (await conn.execute(select(upload_sessions).where(S.id == session_id))).mappings().first()
    return _session(row) if row is not None else None


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
