"""The SQLite engine runs each statement in one hand-off to its database thread, and
still behaves as a DBAPI cursor to SQLAlchemy: rows, rowcounts, RETURNING, executemany,
partial fetches and errors. A transaction's BEGIN costs no hand-off of its own, and
statements prepared for the database thread (the chunk path) read and write what the
Core path does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError, InvalidRequestError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage import sqlite_driver
from app.storage.database import create_engine
from app.storage.tables import UtcDateTime


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


class CountingQueue:
    """Counts what goes to aiosqlite's thread (one item per hand-off)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.puts = 0

    def put_nowait(self, item: object) -> None:
        self.puts += 1
        self.queue.put_nowait(item)


async def test_a_transaction_costs_one_hand_off_per_statement_plus_its_commit(
    tmp_path: Path,
) -> None:
    """BEGIN goes with the transaction's first statement, and a connection that goes
    back to the pool with no transaction open (nothing ran on it) is not rolled back
    through the thread; a failed transaction still rolls back (nothing of it stays)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, sqlite_driver.OneHopConnection)
        counting = CountingQueue(driver._tx)
        driver._tx = counting  # type: ignore[assignment]
        try:
            async with engine.begin() as conn:  # BEGIN IMMEDIATE, two inserts, COMMIT
                await conn.execute(text("INSERT INTO t (id) VALUES (1)"))
                await conn.execute(text("INSERT INTO t (id) VALUES (2)"))
            assert counting.puts == 3
            async with engine.connect() as conn:  # BEGIN IMMEDIATE with the read, ROLLBACK
                assert await conn.scalar(text("SELECT count(*) FROM t")) == 2
            assert counting.puts == 5
            async with engine.begin():  # a transaction that runs nothing never begins
                pass
            async with engine.connect() as conn:  # nor goes back through a rollback
                await conn.get_raw_connection()
            assert counting.puts == 5
            with pytest.raises(IntegrityError):
                await insert_twice(engine)
        finally:
            driver._tx = counting.queue
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 2
            assert driver.in_transaction  # the read's IMMEDIATE transaction...
        assert not driver.in_transaction  # ...rolled back when the connection went back
    finally:
        await engine.dispose()


async def insert_twice(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (id) VALUES (3)"))
        await conn.execute(text("INSERT INTO t (id) VALUES (1)"))


async def test_prepared_statements_write_and_read_what_the_core_path_does(
    tmp_path: Path,
) -> None:
    """Rows written through `Prepared` on the database thread read back through the Core
    path as the same values (UTC datetimes, JSON), and the other way round."""
    metadata = MetaData()
    table = Table(
        "t",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", UtcDateTime, nullable=False),
        Column("doc", JSON),
    )
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        at = datetime(2026, 12, 7, 13, 0, 0, 123456, tzinfo=UTC)
        insert_row = sqlite_driver.Prepared(
            insert(table).values(id=bindparam("id"), at=bindparam("at"), doc=bindparam("doc")),
            engine.dialect,
        )
        by_id = sqlite_driver.Prepared(
            select(table).where(table.c.id == bindparam("id")), engine.dialect
        )

        def write_then_read(connection: Any, row: tuple[Any, ...], key: tuple[Any, ...]) -> Any:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(insert_row.sql, row)
            connection.commit()
            return connection.execute(by_id.sql, key).fetchone()

        raw = await sqlite_driver.run_on_connection(
            engine,
            write_then_read,
            insert_row.parameters({"id": 1, "at": at, "doc": {"a": [1, 2]}}),
            by_id.parameters({"id": 1}),
        )
        assert by_id.row(raw) == {"id": 1, "at": at, "doc": {"a": [1, 2]}}
        async with engine.begin() as conn:
            assert (await conn.execute(select(table.c.at, table.c.doc))).one() == (
                at,
                {"a": [1, 2]},
            )
            await conn.execute(insert(table).values(id=2, at=at + timedelta(hours=1), doc=None))
        raw = await sqlite_driver.run_on_connection(
            engine,
            lambda connection, key: connection.execute(by_id.sql, key).fetchone(),
            by_id.parameters({"id": 2}),
        )
        assert by_id.row(raw) == {"id": 2, "at": at + timedelta(hours=1), "doc": None}
    finally:
        await engine.dispose()


def test_prepared_parameters_are_what_sqlalchemy_binds() -> None:
    """`Prepared.parameters` (its own plan, `utc_datetime_text` for UTC datetimes) gives
    the values SQLAlchemy's `construct_params` and bind processors give, constants bound
    in the statement included; a missing value is refused as SQLAlchemy refuses it."""
    metadata = MetaData()
    table = Table(
        "t",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("at", UtcDateTime, nullable=False),
        Column("state", String(16)),
        Column("doc", JSON),
    )
    dialect = sqlite_dialect.dialect()
    statement = (
        update(table)
        .where(table.c.id == bindparam("id"), table.c.state == "open", table.c.at < bindparam("at"))
        .values(at=bindparam("at"), doc=bindparam("doc"))
    )
    prepared = sqlite_driver.Prepared(statement, dialect)
    compiled = statement.compile(dialect=dialect)
    processors: dict[str, Any] = dict(compiled._bind_processors)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    instants = [
        datetime(2026, 12, 7, 13, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    for instant in instants:
        for zone in zones:
            local = instant.astimezone(zone) if 1000 < instant.year < 9999 else instant
            values = {"id": 7, "at": local, "doc": {"k": [1, None]}}
            given = compiled.construct_params(values)
            expected = tuple(
                processors[name](given[name]) if name in processors else given[name]
                for name in compiled.positiontup or ()
            )
            assert prepared.parameters(values) == expected
            assert sqlite_driver.utc_datetime_text(local) == expected[0]
    with pytest.raises(ValueError, match="naive"):
        prepared.parameters({"id": 1, "at": datetime(2026, 1, 1), "doc": None})
    with pytest.raises(InvalidRequestError, match="'id'"):
        prepared.parameters({"at": instants[0], "doc": None})


def test_prepared_refuses_parameters_rendered_into_the_sql_per_call() -> None:
    """Expanding (`IN` lists) and literal-execute parameters become SQL text at execution
    (`__[POSTCOMPILE_...]`), which a statement compiled once cannot give: refused when
    prepared, not failing later in SQLite."""
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True))
    dialect = sqlite_dialect.dialect()
    expanding = select(table.c.id).where(table.c.id.in_(bindparam("ids", expanding=True)))
    literal = select(table.c.id).limit(bindparam("n", 5, literal_execute=True))
    for statement in (expanding, literal):
        with pytest.raises(ValueError, match="kind"):
            sqlite_driver.Prepared(statement, dialect)
