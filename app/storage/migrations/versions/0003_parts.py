"""Multipart parts flushed to S3 before completion (eager flush).

Revision ID: 0003_parts
Revises: 0002_outbox
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.storage.tables import UtcDateTime

revision: str = "0003_parts"
down_revision: str | None = "0002_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upload_parts",
        sa.Column(
            "session_id",
            sa.String(36),
            sa.ForeignKey("upload_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("part_number", sa.Integer, primary_key=True),
        sa.Column("upload_id", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.String(255), nullable=False),
        sa.Column("covers", sa.JSON, nullable=False),
        sa.Column("uploaded_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_parts")
