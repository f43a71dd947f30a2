"""The SQLite engine runs each statement in one hand-off to its database thread, and
still behaves as a DBAPI cursor to SQLAlchemy: rows, rowcounts, RETURNING, executemany,
partial fetches and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.storage import sqlite_driver
from app.storage.database import create_engine


async def test_statements_round_trip_through_one_hop_cursors(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    try:
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, sqlite_driver.OneHopConnection)
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
            await conn.execute(
                text("INSERT INTO t (id, name) VALUES (:id, :name)"),
                [{"id": i, "name": f"n{i}"} for i in range(5)],
            )
            updated = await conn.execute(text("UPDATE t SET name = name || 'x' WHERE id < 3"))
            assert updated.rowcount == 3
            returned = await conn.execute(
                text("INSERT INTO t (id, name) VALUES (9, 'nine') RETURNING id, name")
            )
            assert returned.all() == [(9, "nine")]
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT id, name FROM t ORDER BY id"))
            assert result.fetchmany(2) == [(0, "n0x"), (1, "n1x")]
            assert result.fetchone() == (2, "n2x")
            assert [row.id for row in result.fetchall()] == [3, 4, 9]
            assert await conn.scalar(text("SELECT count(*) FROM t WHERE id > 100")) == 0
            with pytest.raises(IntegrityError):
                await conn.execute(text("INSERT INTO t (id, name) VALUES (10, 'nine')"))
    finally:
        await engine.dispose()


async def test_a_statement_is_one_hand_off(tmp_path: Path) -> None:
    """aiosqlite's queue to its thread sees one item per statement (it saw four)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            await conn.execute(text("SELECT 0"))  # the transaction's BEGIN is a statement too
            assert isinstance(driver, sqlite_driver.OneHopConnection)
            queue = driver._tx

            class CountingQueue:
                puts = 0

                def put_nowait(self, item: object) -> None:
                    self.puts += 1
                    queue.put_nowait(item)  # type: ignore[arg-type]

            counting = CountingQueue()
            driver._tx = counting  # type: ignore[assignment]
            try:
                rows = (await conn.execute(text("SELECT 1 UNION ALL SELECT 2"))).all()
            finally:
                driver._tx = queue
            assert rows == [(1,), (2,)]
            assert counting.puts == 1
    finally:
        await engine.dispose()


async def test_the_database_url_options_still_reach_sqlite(tmp_path: Path) -> None:
    """The connection takes what the dialect reads from the URL: a read-only URI opens
    the file read-only."""
    path = tmp_path / "driver.db"
    writable = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with writable.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    finally:
        await writable.dispose()

    read_only = create_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        async with read_only.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 0
            with pytest.raises(OperationalError, match="readonly"):
                await conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    finally:
        await read_only.dispose()
