"""PartStore on SQLAlchemy Core: the multipart parts eager flushing already sent to S3.

A part row is written only after S3 acknowledged the part, and always names the
multipart upload it belongs to, so rows of an aborted upload are never mistaken for
parts of a newer one. Rows go with their session (ON DELETE CASCADE). A row may carry the
file's SHA-256 state after its part and the layout that state holds for (hex; see
app.uploads.eager): written in the same fenced statement as the part itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage import leases
from app.storage.tables import upload_parts, upload_sessions
from app.uploads.eager import CoveredChunk, FlushedPart, HashCheckpoint
from app.uploads.models import SessionState
from app.uploads.ports import Lease

P = upload_parts.c
S = upload_sessions.c


class SqlPartStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def list_parts(self, session_id: str, upload_id: str) -> list[FlushedPart]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(upload_parts)
                .where(P.session_id == session_id, P.upload_id == upload_id)
                .order_by(P.part_number)
            )
            return [
                FlushedPart(
                    part_number=int(row["part_number"]),
                    size_bytes=int(row["size_bytes"]),
                    etag=row["etag"],
                    covers=tuple(CoveredChunk(*item) for item in row["covers"]),
                    checkpoint=_checkpoint(row["layout_sha256"], row["sha256_state"]),
                )
                for row in rows.mappings()
            ]

    async def record_part(
        self,
        session_id: str,
        upload_id: str,
        part: FlushedPart,
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> bool:
        async with self.engine.begin() as conn:
            # A flusher whose lease was taken over must not overwrite the new holder's row.
            if lease is not None and not await leases.still_held(conn, lease):
                return False
            await conn.execute(
                delete(upload_parts).where(
                    P.session_id == session_id, P.part_number == part.part_number
                )
            )
            await conn.execute(
                insert(upload_parts).values(
                    session_id=session_id,
                    part_number=part.part_number,
                    upload_id=upload_id,
                    size_bytes=part.size_bytes,
                    etag=part.etag,
                    covers=[list(item) for item in part.covers],
                    uploaded_at=now,
                    layout_sha256=part.checkpoint.layout_sha256 if part.checkpoint else None,
                    sha256_state=part.checkpoint.state.hex() if part.checkpoint else None,
                )
            )
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


def _checkpoint(layout_sha256: str | None, state_hex: str | None) -> HashCheckpoint | None:
    if layout_sha256 is None or state_hex is None:
        return None
    try:
        return HashCheckpoint(layout_sha256, bytes.fromhex(state_hex))
    except ValueError:
        return None  # unreadable: the prefix is hashed again, as without a state
