"""Session leases on real SQLite and PostgreSQL, with two engines (as two replicas have):
one holder at a time, a lapsed lease is taken over with a higher generation, and every
fenced write of a holder that lost its lease is refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import create_engine, migrate
from app.storage.leases import SqlLeaseStore, held_by
from app.storage.sql_store import SqlSessionStore
from app.storage.tables import session_leases
from app.uploads import leasing
from app.uploads.models import SessionState, UploadSession, utc_now


@pytest.fixture
async def engines(database: dict[str, Any]) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    url, schema = database["database_url"], database.get("database_schema")
    first = create_engine(url, schema=schema)
    second = create_engine(url, schema=schema)
    await migrate(first, schema=schema)
    yield first, second
    await first.dispose()
    await second.dispose()


def _uploading_session(now: datetime, *, expires_at: datetime) -> UploadSession:
    return UploadSession(
        id=str(uuid.uuid4()),
        owner_sub="user-1",
        main_service_file_id=1,
        original_file_name="a.wav",
        state=SessionState.UPLOADING,
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
    )


async def test_one_holder_then_take_over_with_a_higher_generation(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    a, b = (SqlLeaseStore(engine) for engine in engines)
    session_id = str(uuid.uuid4())
    now = utc_now()
    first = await a.acquire(session_id, "work", holder="a", now=now, ttl_seconds=10)
    assert first is not None and first.generation == 1
    assert await b.acquire(session_id, "work", holder="b", now=now, ttl_seconds=10) is None
    # Another name is another lease (e.g. a tus writer beside the work lease).
    other = await b.acquire(session_id, "writer", holder="b", now=now, ttl_seconds=10)
    assert other is not None and other.generation == 1

    later = now + timedelta(seconds=11)  # a's holder died: nothing renewed it
    taken = await b.acquire(session_id, "work", holder="b", now=later, ttl_seconds=10)
    assert taken is not None and taken.generation == 2
    assert await a.renew(first, now=later, ttl_seconds=10) is None
    await a.release(first, now=later)  # not a's any more: changes nothing
    assert await a.current(session_id, "work") == taken

    renewed = await b.renew(taken, now=later, ttl_seconds=10)
    assert renewed is not None and renewed.expires_at == later + timedelta(seconds=10)
    await b.release(renewed, now=later)
    again = await a.acquire(session_id, "work", holder="a", now=later, ttl_seconds=10)
    assert again is not None and again.generation == 3  # never back to an old token


async def test_concurrent_acquires_have_exactly_one_winner(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    stores = [SqlLeaseStore(engine) for engine in engines]
    for _ in range(5):
        session_id = str(uuid.uuid4())
        now = utc_now()
        won = await asyncio.gather(
            *(
                store.acquire(session_id, "work", holder=f"h{i}", now=now, ttl_seconds=10)
                for i, store in enumerate(stores * 3)
            )
        )
        assert len([lease for lease in won if lease is not None]) == 1


async def test_a_holder_that_lost_its_lease_cannot_complete_the_session(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    leases = SqlLeaseStore(engines[0])
    store = SqlSessionStore(engines[1])
    now = utc_now()
    session = _uploading_session(now, expires_at=now + timedelta(hours=1))
    await store.create(session)
    assert await store.claim_completion(session.id, now=now, lease_expires_at=now)
    stale = await leases.acquire(session.id, "work", holder="a", now=now, ttl_seconds=1)
    later = now + timedelta(seconds=2)
    fresh = await leases.acquire(session.id, "work", holder="b", now=later, ttl_seconds=10)
    assert stale is not None and fresh is not None
    assert not await store.finish_completion(session.id, now=later, result={}, lease=stale)
    await store.release_completion(session.id, now=later, lease=stale)
    current = await store.get(session.id)
    assert current is not None and current.state is SessionState.COMPLETING
    assert await store.finish_completion(session.id, now=later, result={"k": 1}, lease=fresh)
    done = await store.get(session.id)
    assert done is not None and done.state is SessionState.COMPLETED
    assert await leases.current(session.id, "work") is None  # rows go with completion


async def test_held_lease_is_renewed_while_held_and_released_after(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    a, b = (SqlLeaseStore(engine) for engine in engines)
    session_id = str(uuid.uuid4())
    held = await leasing.try_hold(a, session_id, ttl_seconds=0.6)
    assert held is not None
    async with held:
        first_expiry = held.lease.expires_at
        # Past the first time to live, the lease is still held: it was renewed.
        await asyncio.wait_for(_renewed_past(held, first_expiry), timeout=10)
        assert await leasing.try_hold(b, session_id, ttl_seconds=0.6) is None
        assert not held.lost.is_set()
    taken = await leasing.try_hold(b, session_id, ttl_seconds=0.6)
    assert taken is not None and taken.generation == 2


async def _renewed_past(held: leasing.HeldLease, expiry: Any) -> None:
    while held.lease.expires_at <= expiry:
        await asyncio.sleep(0.05)


async def test_janitor_release_waits_for_a_renewal_in_flight_and_then_sees_it_live(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """PostgreSQL: the holder renews (its check right before S3's commit) while the
    janitor releases its long-lapsed completion. The release must either see the renewal
    or take the lease before it: never release the session and then take a lease whose
    holder was just told it still has it."""
    holder_engine, janitor_engine = engines
    if holder_engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: nothing can interleave")
    leases = SqlLeaseStore(holder_engine)
    store = SqlSessionStore(janitor_engine)
    now = utc_now()
    session = _uploading_session(now, expires_at=now + timedelta(days=2))
    await store.create(session)
    assert await store.claim_completion(session.id, now=now, lease_expires_at=now)
    lease = await leases.acquire(session.id, "work", holder="a", now=now, ttl_seconds=1)
    assert lease is not None
    later = now + timedelta(hours=1)  # long past the lease: the janitor's case

    renewal = await holder_engine.connect()
    transaction = await renewal.begin()
    release: asyncio.Task[UploadSession | None] | None = None
    try:
        renewer = await renewal.scalar(text("SELECT pg_backend_pid()"))
        renewed = await renewal.execute(
            update(session_leases)
            .where(held_by(lease))
            .values(expires_at=later + timedelta(seconds=10))
        )
        assert renewed.rowcount == 1  # uncommitted: the row stays locked
        release = asyncio.create_task(
            store.release_stale_completion(session.id, now=later, lease_lapsed_before=later)
        )
        async with holder_engine.connect() as watcher:

            async def release_waits_for_the_renewal() -> bool:
                blocked = await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE :renewer = ANY(pg_blocking_pids(pid))"
                    ),
                    {"renewer": renewer},
                )
                return bool(blocked)

            deadline = asyncio.get_running_loop().time() + 30
            while not await release_waits_for_the_renewal():
                assert not release.done(), "the release did not wait for the renewal's lock"
                assert asyncio.get_running_loop().time() < deadline, "the release never blocked"
                await asyncio.sleep(0.02)
        await transaction.commit()
        assert await release is None  # the renewal was seen: the completion is alive
    finally:
        if transaction.is_active:
            await transaction.rollback()
        await renewal.close()
        if release is not None and not release.done():
            release.cancel()
    current = await store.get(session.id)
    assert current is not None and current.state is SessionState.COMPLETING
    assert await leases.renew(lease, now=later, ttl_seconds=10) is not None  # still a's
