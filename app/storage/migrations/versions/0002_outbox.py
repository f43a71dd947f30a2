"""Outbox of main-service notifications: events and their delivery attempts.

Revision ID: 0002_outbox
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.storage.tables import UtcDateTime

revision: str = "0002_outbox"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_events",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("upload_session_id", sa.String(36), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("next_attempt_at", UtcDateTime, nullable=False),
        sa.Column("claimed_until", UtcDateTime),
        sa.Column("claim_token", sa.String(36)),
        sa.Column("delivered_at", UtcDateTime),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.String(500)),
    )
    op.create_index(
        "ux_notify_events_session_type",
        "notify_events",
        ["upload_session_id", "event_type"],
        unique=True,
    )
    op.create_index("ix_notify_events_due", "notify_events", ["state", "next_attempt_at"])
    op.create_table(
        "notify_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "event_id",
            sa.String(36),
            sa.ForeignKey("notify_events.event_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempted_at", UtcDateTime, nullable=False),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.String(500)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
    )
    op.create_index("ix_notify_attempts_event_id", "notify_attempts", ["event_id"])


def downgrade() -> None:
    op.drop_table("notify_attempts")
    op.drop_table("notify_events")
