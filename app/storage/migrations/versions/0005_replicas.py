"""Replicas sharing only the database and the bucket: per-session leases with a fencing
token, and the index that keeps the retention purge cheap at fleet scale.

Revision ID: 0005_replicas
Revises: 0004_eager_upload
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.storage.tables import UtcDateTime

revision: str = "0005_replicas"
down_revision: str | None = "0004_eager_upload"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_leases",
        sa.Column("session_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )
    # The purge of closed sessions and the per-state counts walk (state, updated_at).
    op.create_index(
        "ix_upload_sessions_state_updated_at", "upload_sessions", ["state", "updated_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_upload_sessions_state_updated_at", table_name="upload_sessions")
    op.drop_table("session_leases")
