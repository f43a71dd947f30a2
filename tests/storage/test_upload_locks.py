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
from app.uploads.models import SessionState, StoredChunk, UploadSession
from app.uploads.ports import ChunkRecordOutcome, ChunkRecordResult, Lease, LeaseState


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


async def test_the_last_record_releases_the_lease_only_while_it_is_held(
    engine: AsyncEngine,
) -> None:
    """A PATCH's last chunk record releases its writer lease in the same transaction:
    a replaced writer's record is refused and leaves the new holder's lease alone, and a
    released lease cannot be renewed back to life."""
    clock = Clock()
    store = SqlSessionStore(engine)
    locks = SqlUploadLocks(SqlLeaseStore(engine), clock=clock)
    session_id = await new_session(engine)
    stale = await locks.acquire(session_id, ttl_seconds=10)
    assert stale is not None
    clock.now += timedelta(seconds=11)  # the first writer stalls past its lease
    holder = await locks.acquire(session_id, ttl_seconds=10)
    assert holder is not None and holder.generation == stale.generation + 1

    def chunk(index: int) -> StoredChunk:
        return StoredChunk(index=index, size_bytes=10, sha256="0" * 64, file_name=f"c{index}")

    refused = await record(store, session_id, chunk(0), release=stale)
    assert refused.outcome is ChunkRecordOutcome.LEASE_LOST
    assert await store.chunk_totals(session_id) == (0, 0)
    assert await locks.acquire(session_id, ttl_seconds=10) is None  # still the holder's

    recorded = await record(store, session_id, chunk(0), release=holder)
    assert recorded.outcome is ChunkRecordOutcome.RECORDED
    assert await store.chunk_totals(session_id) == (1, 10)
    assert await locks.renew(holder, ttl_seconds=10) is LeaseState.LOST
    after = await locks.acquire(session_id, ttl_seconds=10)
    assert after is not None and after.generation == holder.generation + 1


async def test_a_chunk_record_keeps_the_session_within_its_size(engine: AsyncEngine) -> None:
    """Replacing a chunk frees its bytes; a chunk past the size is refused and the chunk
    it would have replaced stays."""
    store = SqlSessionStore(engine)
    session_id = await new_session(engine)

    def chunk(index: int, size: int, name: str) -> StoredChunk:
        return StoredChunk(index=index, size_bytes=size, sha256="0" * 64, file_name=name)

    first = await record(store, session_id, chunk(0, 60, "a"))
    assert first.outcome is ChunkRecordOutcome.RECORDED and first.replaced is None
    replaced = await record(store, session_id, chunk(0, 90, "b"))
    assert replaced.outcome is ChunkRecordOutcome.RECORDED
    assert replaced.replaced is not None and replaced.replaced.file_name == "a"
    too_large = await record(store, session_id, chunk(1, 20, "c"))
    assert too_large.outcome is ChunkRecordOutcome.SESSION_TOO_LARGE
    assert await store.list_chunks(session_id) == [chunk(0, 90, "b")]
    missing = await record(store, str(uuid.uuid4()), chunk(0, 1, "d"))
    assert missing.outcome is ChunkRecordOutcome.MISSING


async def record(
    store: SqlSessionStore, session_id: str, chunk: StoredChunk, release: Lease | None = None
) -> ChunkRecordResult:
    now = datetime.now(UTC)
    return await store.record_chunk(
        session_id,
        chunk,
        now=now,
        expires_at=now + timedelta(hours=1),
        max_session_bytes=100,
        release=release,
    )
