"""Upload sessions and their chunks.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.storage.tables import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner_sub", sa.String(255), nullable=False),
        sa.Column("main_service_file_id", sa.BigInteger, nullable=False),
        sa.Column("original_file_name", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("total_size", sa.BigInteger),
        sa.Column("total_chunks", sa.Integer),
        sa.Column("chunk_size", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("content_type", sa.String(255)),
        sa.Column("lease_expires_at", UtcDateTime),
        sa.Column("object_key", sa.String(1024)),
        sa.Column("multipart_upload_id", sa.String(1024)),
        sa.Column("result", sa.JSON),
    )
    op.create_index("ix_upload_sessions_owner_sub", "upload_sessions", ["owner_sub"])
    op.create_index("ix_upload_sessions_state", "upload_sessions", ["state"])
    op.create_index("ix_upload_sessions_expires_at", "upload_sessions", ["expires_at"])
    op.create_table(
        "upload_chunks",
        sa.Column(
            "session_id",
            sa.String(36),
            sa.ForeignKey("upload_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("chunk_index", sa.Integer, primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_chunks")
    op.drop_table("upload_sessions")
