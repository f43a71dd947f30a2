"""The outbox's claims on real SQLite and PostgreSQL: two stores with separate engines
(as two replicas have) never hold one event at once, and a lapsed lease frees it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.notify.outbox import EventState, SqlOutbox, insert_event
from app.notify.tables import notify_events
from app.storage.database import create_engine, migrate
from app.uploads.models import utc_now
from app.uploads.ports import OutboxEvent


@pytest.fixture
async def engines(database: dict[str, Any]) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    url, schema = database["database_url"], database.get("database_schema")
    first = create_engine(url, schema=schema)
    second = create_engine(url, schema=schema)
    await migrate(first, schema=schema)
    yield first, second
    await first.dispose()
    await second.dispose()


async def add_events(engine: AsyncEngine, count: int) -> list[str]:
    now = utc_now()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with engine.begin() as conn:
        for event_id in ids:
            await insert_event(
                conn,
                OutboxEvent(
                    event_id=event_id,
                    event_type="upload.completed",
                    upload_session_id=str(uuid.uuid4()),
                    occurred_at=now,
                    payload={"event_id": event_id},
                ),
            )
    return ids


async def test_concurrent_claims_are_disjoint_and_cover_every_due_event(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    ids = await add_events(engines[0], 40)
    stores = [SqlOutbox(engine) for engine in engines]
    now = utc_now()
    batches = await asyncio.gather(
        *(store.claim_due(now=now, limit=7, lease_seconds=60) for store in stores * 4)
    )
    claimed = [event.event_id for batch in batches for event in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert set(claimed) == set(ids)
    # All leased: nothing is due for anyone until the leases lapse.
    assert await stores[1].claim_due(now=now, limit=100, lease_seconds=60) == []
    later = now + timedelta(seconds=61)
    assert len(await stores[1].claim_due(now=later, limit=100, lease_seconds=60)) == 40


async def test_a_claim_for_one_event_takes_only_that_event(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = await add_events(engines[0], 2)
    store = SqlOutbox(engines[1])
    [claimed] = await store.claim_due(now=utc_now(), limit=5, lease_seconds=60, event_id=second)
    assert claimed.event_id == second
    assert claimed.attempts_made == 0
    [other] = await store.claim_due(now=utc_now(), limit=5, lease_seconds=60)
    assert other.event_id == first
    counts = await store.counts_by_state()
    assert counts[EventState.PENDING] == 2


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_postgres_claim_skips_rows_locked_by_another_replica(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    locked, free = await add_events(engines[0], 2)
    async with engines[0].begin() as conn:
        await conn.execute(
            select(notify_events.c.event_id)
            .where(notify_events.c.event_id == locked)
            .with_for_update()
        )
        # Another replica's claim neither waits for the lock nor takes the locked row.
        claimed = await asyncio.wait_for(
            SqlOutbox(engines[1]).claim_due(now=utc_now(), limit=10, lease_seconds=60), 5
        )
        assert [event.event_id for event in claimed] == [free]
