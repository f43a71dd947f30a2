"""A running total of each session's recorded chunk bytes, so the size check of a chunk's
record reads one row instead of summing the session's chunk rows on every chunk.

Revision ID: 0009_session_chunk_bytes
Revises: 0008_tus_concat_parts
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_session_chunk_bytes"
down_revision: str | None = "0008_tus_concat_parts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "upload_sessions",
        sa.Column("chunk_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    # Only sessions that can still record a chunk need the true figure (a completing one
    # may go back to uploading after a failed attempt); closed ones never read it, and at
    # fleet scale they are nearly all the rows.
    op.execute(
        "UPDATE upload_sessions SET chunk_bytes = ("
        " SELECT COALESCE(SUM(upload_chunks.size_bytes), 0) FROM upload_chunks"
        " WHERE upload_chunks.session_id = upload_sessions.id"
        ") WHERE state IN ('uploading', 'completing')"
    )


def downgrade() -> None:
    op.drop_column("upload_sessions", "chunk_bytes")
