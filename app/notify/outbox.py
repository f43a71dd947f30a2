"""The outbox on SQLAlchemy Core (SQLite or PostgreSQL).

Claiming: an event is due when pending, its `next_attempt_at` has come and no lease
holds it. A claim sets a lease (`claimed_until`) and a token in one transaction; only the
token's holder may record a failed attempt. PostgreSQL selects with `FOR UPDATE SKIP
LOCKED`, so replicas claiming at once take disjoint rows without waiting; on SQLite every
transaction is `BEGIN IMMEDIATE` (see `app.storage.database`), so claims are serialised
and the `WHERE` on the lease decides. A process that dies holding a lease only delays the
event until the lease lapses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.notify.signing import encode_body
from app.notify.tables import notify_attempts, notify_events
from app.uploads.ports import OutboxEvent

E = notify_events.c
A = notify_attempts.c


class EventState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class ClaimedEvent:
    event_id: str
    body: bytes
    attempts_made: int
    claim_token: str


@dataclass(frozen=True)
class Attempt:
    attempted_at: datetime
    duration_seconds: float
    status_code: int | None
    error: str | None
    outcome: AttemptOutcome
    worker: str


@dataclass(frozen=True)
class EventRecord:
    event_id: str
    event_type: str
    upload_session_id: str
    state: EventState
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


class RequeueOutcome(StrEnum):
    REQUEUED = "requeued"
    UNKNOWN = "unknown"
    ALREADY_DELIVERED = "already_delivered"
    IN_FLIGHT = "in_flight"


async def insert_event(conn: AsyncConnection, event: OutboxEvent) -> None:
    """Adds a pending event, due at once, inside the caller's transaction."""
    await conn.execute(
        insert(notify_events).values(
            event_id=event.event_id,
            event_type=event.event_type,
            upload_session_id=event.upload_session_id,
            body=encode_body(event.payload).decode(),
            state=EventState.PENDING.value,
            attempts=0,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            next_attempt_at=event.occurred_at,
        )
    )


class SqlOutbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def claim_due(
        self,
        *,
        now: datetime,
        limit: int,
        lease_seconds: float,
        event_id: str | None = None,
    ) -> list[ClaimedEvent]:
        """Leases up to `limit` due events (only `event_id`, if given) to the caller."""
        due = and_(
            E.state == EventState.PENDING.value,
            E.next_attempt_at <= now,
            or_(E.claimed_until.is_(None), E.claimed_until < now),
        )
        query = select(E.event_id).where(due)
        if event_id is not None:
            query = query.where(E.event_id == event_id)
        query = query.order_by(E.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
        token = str(uuid.uuid4())
        async with self.engine.begin() as conn:
            ids = list(await conn.scalars(query))
            if not ids:
                return []
            await conn.execute(
                update(notify_events)
                .where(E.event_id.in_(ids), due)
                .values(claimed_until=now + timedelta(seconds=lease_seconds), claim_token=token)
            )
            rows = await conn.execute(
                select(E.event_id, E.body, E.attempts)
                .where(E.claim_token == token)
                .order_by(E.next_attempt_at)
            )
            return [
                ClaimedEvent(
                    event_id=row.event_id,
                    body=row.body.encode(),
                    attempts_made=int(row.attempts),
                    claim_token=token,
                )
                for row in rows
            ]

    async def record_attempt(
        self, claimed: ClaimedEvent, attempt: Attempt, *, next_attempt_at: datetime | None
    ) -> None:
        """Appends the attempt and moves the event on. A delivery always counts, even
        from a holder whose lease lapsed; anything else only from the lease holder."""
        at = attempt.attempted_at
        common = {
            "attempts": E.attempts + 1,
            "updated_at": at,
            "claimed_until": None,
            "claim_token": None,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
        }
        async with self.engine.begin() as conn:
            if attempt.outcome is AttemptOutcome.DELIVERED:
                await conn.execute(
                    update(notify_events)
                    .where(E.event_id == claimed.event_id, E.state == EventState.PENDING.value)
                    .values(state=EventState.DELIVERED.value, delivered_at=at, **common)
                )
            else:
                state = (
                    EventState.FAILED
                    if attempt.outcome is AttemptOutcome.FAILED
                    else EventState.PENDING
                )
                values = dict(common, state=state.value)
                if next_attempt_at is not None:
                    values["next_attempt_at"] = next_attempt_at
                await conn.execute(
                    update(notify_events)
                    .where(
                        E.event_id == claimed.event_id,
                        E.claim_token == claimed.claim_token,
                        E.state == EventState.PENDING.value,
                    )
                    .values(**values)
                )
            await conn.execute(
                insert(notify_attempts).values(
                    event_id=claimed.event_id,
                    attempted_at=at,
                    duration_seconds=attempt.duration_seconds,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    outcome=attempt.outcome.value,
                    worker=attempt.worker,
                )
            )

    async def get(self, event_id: str) -> EventRecord | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(notify_events).where(E.event_id == event_id)))
                .mappings()
                .first()
            )
        return _record(row) if row is not None else None

    async def body_of(self, event_id: str) -> bytes | None:
        async with self.engine.connect() as conn:
            body = await conn.scalar(select(E.body).where(E.event_id == event_id))
        return body.encode() if body is not None else None

    async def event_for_session(
        self, session_id: str, event_type: str = "upload.completed"
    ) -> str | None:
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                select(E.event_id).where(
                    E.upload_session_id == session_id, E.event_type == event_type
                )
            )
        return str(found) if found is not None else None

    async def list_events(
        self, *, state: EventState | None = None, limit: int = 100
    ) -> list[EventRecord]:
        query = select(notify_events).order_by(E.created_at).limit(limit)
        if state is not None:
            query = query.where(E.state == state.value)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(row) for row in rows]

    async def attempts_of(self, event_id: str) -> list[Attempt]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(notify_attempts).where(A.event_id == event_id).order_by(A.id)
            )
            return [
                Attempt(
                    attempted_at=row.attempted_at,
                    duration_seconds=float(row.duration_seconds),
                    status_code=row.status_code,
                    error=row.error,
                    outcome=AttemptOutcome(row.outcome),
                    worker=row.worker,
                )
                for row in rows
            ]

    async def counts_by_state(self) -> dict[EventState, int]:
        """Outbox depth and failures, for metrics: every state, zero when empty."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(E.state, func.count()).select_from(notify_events).group_by(E.state)
            )
            counts = {state: 0 for state in EventState}
            for state, count in rows:
                counts[EventState(state)] = int(count)
            return counts

    async def requeue(self, event_id: str, *, now: datetime) -> RequeueOutcome:
        """A failed (or waiting) event becomes due now with a fresh attempt budget; its
        attempt history stays. A delivered event is never sent again, and one being sent
        right now is left to its sender."""
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(notify_events)
                .where(
                    E.event_id == event_id,
                    E.state != EventState.DELIVERED.value,
                    or_(E.claimed_until.is_(None), E.claimed_until < now),
                )
                .values(
                    state=EventState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    claimed_until=None,
                    claim_token=None,
                    updated_at=now,
                )
            )
            if changed.rowcount == 1:
                return RequeueOutcome.REQUEUED
            state = await conn.scalar(select(E.state).where(E.event_id == event_id))
            if state is None:
                return RequeueOutcome.UNKNOWN
            if state == EventState.DELIVERED.value:
                return RequeueOutcome.ALREADY_DELIVERED
            return RequeueOutcome.IN_FLIGHT


def _record(row: RowMapping) -> EventRecord:
    return EventRecord(
        event_id=row["event_id"],
        event_type=row["event_type"],
        upload_session_id=row["upload_session_id"],
        state=EventState(row["state"]),
        attempts=int(row["attempts"]),
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
    )
