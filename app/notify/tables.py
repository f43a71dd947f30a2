"""The outbox tables. Migration `0002_outbox` creates them.

`notify_events` holds one row per event, its exact JSON body (signed as stored, so every
attempt carries the same bytes), its state and its claim lease; `notify_attempts` is the
append-only history of every delivery attempt.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from app.storage.tables import UtcDateTime, metadata

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_AttemptId = BigInteger().with_variant(Integer(), "sqlite")

notify_events = Table(
    "notify_events",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("upload_session_id", String(36), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("claimed_until", UtcDateTime),
    Column("claim_token", String(36)),
    Column("delivered_at", UtcDateTime),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    # One completion event per session, even if a completion were ever finished twice.
    Index("ux_notify_events_session_type", "upload_session_id", "event_type", unique=True),
    Index("ix_notify_events_due", "state", "next_attempt_at"),
)

notify_attempts = Table(
    "notify_attempts",
    metadata,
    Column("id", _AttemptId, primary_key=True, autoincrement=True),
    Column(
        "event_id",
        String(36),
        ForeignKey("notify_events.event_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("attempted_at", UtcDateTime, nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", String(500)),
    Column("outcome", String(16), nullable=False),
    Column("worker", String(255), nullable=False),
)
