"""Eager flush's part rows on real SQLite (its one-hand-off path) and PostgreSQL (Core):
what one writes the other reads the same, a re-recorded part replaces its row, and a
record under a lease that was taken over writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import create_engine, migrate
from app.storage.leases import SqlLeaseStore
from app.storage.parts_store import SqlPartStore
from app.storage.tables import upload_parts
from app.uploads.eager import CoveredChunk, FlushedPart, HashCheckpoint
from tests.storage.test_upload_locks import new_session


@pytest.fixture
async def engine(database: dict[str, Any]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database["database_url"], schema=database.get("database_schema"))
    await migrate(engine, schema=database.get("database_schema"))
    yield engine
    await engine.dispose()


async def test_part_rows_round_trip_and_a_lost_lease_writes_nothing(engine: AsyncEngine) -> None:
    parts = SqlPartStore(engine)
    leases = SqlLeaseStore(engine)
    session_id = await new_session(engine)
    now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    lease = await leases.acquire(session_id, "work", holder="a", now=now, ttl_seconds=10)
    assert lease is not None
    covers = (CoveredChunk(0, "a" * 64, 3_000_000, 0), CoveredChunk(1, "b" * 64, 9, 3_000_000))
    first = FlushedPart(1, 5_242_880, '"etag-1"', covers, HashCheckpoint("c" * 64, b"\x01" * 40))
    second = FlushedPart(2, 5_242_880, '"etag-2"', covers[1:])
    assert await parts.record_part(session_id, "up-1", first, now=now, lease=lease)
    assert await parts.record_part(session_id, "up-1", second, now=now)
    assert await parts.list_parts(session_id, "up-1") == [first, second]
    assert await parts.list_parts(session_id, "up-other") == []

    again = FlushedPart(1, 5_242_880, '"etag-1b"', covers)  # re-sent: the row is replaced
    assert await parts.record_part(session_id, "up-1", again, now=now, lease=lease)
    assert await parts.list_parts(session_id, "up-1") == [again, second]
    async with engine.connect() as conn:  # as the Core path reads it
        rows = (await conn.execute(select(upload_parts).order_by("part_number"))).mappings()
        stored = [dict(row) for row in rows]
    assert [row["etag"] for row in stored] == ['"etag-1b"', '"etag-2"']
    assert stored[0]["covers"] == [list(item) for item in covers]
    assert stored[0]["uploaded_at"] == now

    later = now + timedelta(seconds=11)  # the lease lapses and another holder takes it
    taker = await leases.acquire(session_id, "work", holder="b", now=later, ttl_seconds=10)
    assert taker is not None
    stale = FlushedPart(1, 5_242_880, '"stale"', covers)
    assert not await parts.record_part(session_id, "up-1", stale, now=later, lease=lease)
    assert await parts.list_parts(session_id, "up-1") == [again, second]
