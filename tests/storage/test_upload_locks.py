"""The per-upload writer lease on real SQLite and PostgreSQL: one holder at a time, a
lapsed lease can be taken (with a higher generation), a holder learns when another
request asks for the upload, and a replaced holder learns it lost it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import create_engine, migrate
from app.storage.leases import SqlLeaseStore
from app.storage.resumable import SqlUploadLocks
from app.storage.sql_store import SqlSessionStore
from app.uploads.models import SessionState, UploadSession
from app.uploads.ports import LeaseState


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def engine(database: dict[str, Any]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database["database_url"], schema=database.get("database_schema"))
    await migrate(engine, schema=database.get("database_schema"))
    yield engine
    await engine.dispose()


async def new_session(engine: AsyncEngine) -> str:
    now = datetime.now(UTC)
    session_id = str(uuid.uuid4())
    await SqlSessionStore(engine).create(
        UploadSession(
            id=session_id,
            owner_sub="u",
            main_service_file_id=1,
            original_file_name="a.wav",
            state=SessionState.UPLOADING,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(hours=1),
        )
    )
    return session_id


async def test_one_holder_at_a_time_and_a_lapsed_lease_is_taken_over(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    locks = SqlUploadLocks(SqlLeaseStore(engine), clock=clock)
    session_id = await new_session(engine)
    first = await locks.acquire(session_id, ttl_seconds=10)
    assert first is not None and first.generation == 1
    assert await locks.acquire(session_id, ttl_seconds=10) is None

    await locks.request_release(session_id)
    assert await locks.renew(first, ttl_seconds=10) is LeaseState.RELEASE_REQUESTED

    clock.now += timedelta(seconds=11)  # the holder died: its lease lapses
    second = await locks.acquire(session_id, ttl_seconds=10)
    assert second is not None and second.generation == 2
    assert await locks.renew(first, ttl_seconds=10) is LeaseState.LOST
    assert await locks.renew(second, ttl_seconds=10) is LeaseState.HELD

    await locks.release(first)  # a stale holder's release does not free the new one's
    assert await locks.acquire(session_id, ttl_seconds=10) is None
    await locks.release(second)
    third = await locks.acquire(session_id, ttl_seconds=10)
    assert third is not None and third.generation == 3


async def test_leases_of_different_uploads_are_independent(engine: AsyncEngine) -> None:
    locks = SqlUploadLocks(SqlLeaseStore(engine))
    one, two = await new_session(engine), await new_session(engine)
    assert await locks.acquire(one, ttl_seconds=10) is not None
    assert await locks.acquire(two, ttl_seconds=10) is not None
