"""The resumable front doors: protocol records (tus metadata, concatenation) and the
per-upload writer lease.

Revision ID: 0006_tus
Revises: 0004_eager_upload
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.storage.tables import UtcDateTime

revision: str = "0006_tus"
down_revision: str | None = "0004_eager_upload"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column(
            "session_id",
            sa.String(36),
            sa.ForeignKey("upload_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("metadata", sa.String(4096)),
        sa.Column("concat", sa.String(16)),
    )
    op.create_table(
        "upload_locks",
        sa.Column(
            "session_id",
            sa.String(36),
            sa.ForeignKey("upload_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("holder", sa.String(36), nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("release_requested", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_locks")
    op.drop_table("resumable_uploads")
