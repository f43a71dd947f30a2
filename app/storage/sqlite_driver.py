"""aiosqlite with one thread hop per statement instead of four.

SQLAlchemy's aiosqlite adapter opens a cursor, executes, fetches and closes it, and
aiosqlite runs each of those in its database thread: four hand-offs between the event
loop and that thread per statement. On this service's 2-core VMs a hand-off costs
~60 µs of CPU (measured: `run_in_executor` round trip of a no-op under uvloop), and the
chunk path runs ~7 statements, so the hand-offs cost more than the SQL. Here a
statement's cursor is opened, executed, drained and closed in one call in the
database thread; the rows then wait in memory, which is fine for this service's small
result sets (no query here streams rows).

A transaction's `BEGIN` costs no hand-off of its own: it is held back and run in the
same hop as the transaction's first statement (a transaction that runs none never
begins). A rollback or commit with no transaction open (a connection going back to the
pool, which SQLAlchemy rolls back, after nothing ran on it) costs none either: whether
one is open is known from the last hop. So a transaction of N statements costs N + 1
hops (a read through SQLAlchemy: its statement, then the pool's rollback), and
`run_on_connection` one for a whole transaction.

Everything else (the thread, the connection, commit, rollback, close) is aiosqlite's,
at the version pinned in requirements.txt; `_execute` is how aiosqlite's own methods
reach its thread.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.util import await_, greenlet_spawn

from app.storage.tables import UtcDateTime

Row = Any
Description = tuple[tuple[Any, ...], ...] | None


def _run(
    connection: sqlite3.Connection,
    sql: str,
    parameters: Any,
    *,
    many: bool,
    begin: str | None = None,
) -> tuple[Description, int, int | None, list[Row]]:
    if begin is not None:
        connection.execute(begin)
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        # rowcount of a statement with RETURNING is final only once its rows are read.
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor:
    """The cursor SQLAlchemy's adapter drives: its work is done by `execute`."""

    arraysize = 1

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: deque[Row] = deque()

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = ()) -> OneHopCursor:
        return await self._run(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> OneHopCursor:
        return await self._run(sql, list(parameters), many=True)

    async def _run(self, sql: str, parameters: Any, *, many: bool) -> OneHopCursor:
        connection = self._connection
        if not many and _is_begin(sql):
            connection.pending_begin = sql  # runs with the first statement
            self.description, self.rowcount, self.lastrowid = None, -1, None
            self._rows.clear()
            return self
        run = partial(_run, many=many, begin=connection.pending_begin)
        connection.pending_begin = None
        self.description, self.rowcount, self.lastrowid, rows = await connection.run(
            run, sql, parameters
        )
        self._rows = deque(rows)
        return self

    async def fetchone(self) -> Row | None:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Row]:
        count = min(size or self.arraysize, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> Sequence[Row]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def close(self) -> None:
        self._rows.clear()


def _is_begin(sql: str) -> bool:
    return sql[:5].upper() == "BEGIN"


class OneHopConnection(aiosqlite.Connection):
    # A BEGIN not sent yet (it goes with the next statement), and whether the database
    # thread's connection was inside a transaction after the last hop.
    pending_begin: str | None = None
    in_transaction: bool = False

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def run(self, function: Any, *args: Any) -> Any:
        """`function(sqlite3_connection, *args)` in the database thread."""

        def call() -> Any:
            connection = self._conn
            try:
                return function(connection, *args)
            finally:
                # Also after a failure: a statement that failed may have ended it.
                self.in_transaction = connection.in_transaction

        return await self._execute(call)  # type: ignore[no-untyped-call]

    async def commit(self) -> None:
        self.pending_begin = None
        if self.in_transaction:
            await self.run(lambda connection: connection.commit())

    async def rollback(self) -> None:
        self.pending_begin = None
        if self.in_transaction:
            await self.run(lambda connection: connection.rollback())


def connector(url: URL, *, timeout: float) -> Any:
    """An `async_creator` for SQLAlchemy's `sqlite+aiosqlite` dialect. The connection takes
    the arguments the dialect itself derives from the URL (`?mode=ro&uri=true`, ...), so
    swapping the cursor changes nothing of how a database URL is read."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(url)
    kwargs = {**kwargs, "timeout": timeout}

    async def connect() -> OneHopConnection:
        connection = OneHopConnection(partial(sqlite3.connect, *args, **kwargs), iter_chunk_size=64)
        # As SQLAlchemy does for aiosqlite's own connections: never keep the process up.
        connection._thread.daemon = True
        await connection
        return connection

    return connect


class Prepared:
    """A Core statement compiled once for SQLite, to run straight on the database
    thread's `sqlite3` connection (`run_on_connection`): its parameters go through the
    same type processing SQLAlchemy would apply (UTC datetimes, JSON), and so do its
    result rows, so what it writes and reads is what the Core path writes and reads."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        # Per position: the parameter's name, its bind processor, and the value bound in
        # the statement (`state == 'uploading'`, a constant) or `_REQUIRED`. What
        # `construct_params` would give, without its generic per-call work: the chunk
        # path prepares a few statements per request on the event loop.
        self._plan: list[tuple[str, Any, Any]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            # Those are rendered into the SQL per call (`__[POSTCOMPILE_...]`), not bound.
            if bind.callable is not None or bind.expanding or bind.literal_execute:
                raise ValueError(f"Prepared does not take parameter {name!r}'s kind")
            process = _fast_bind_processor(bind.type, dialect) or bind.type.dialect_impl(
                dialect
            ).bind_processor(dialect)
            self._plan.append((name, process, _REQUIRED if bind.required else bind.value))
        columns = list(getattr(statement, "exported_columns", ()))
        self.keys: list[str] = [column.key for column in columns]
        self._results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """Runs on the event loop: processing is plain Python either way."""
        out = []
        for name, process, bound in self._plan:
            value = values.get(name, bound)
            if value is _REQUIRED:
                raise InvalidRequestError(f"A value is required for bind parameter {name!r}")
            out.append(process(value) if process is not None and value is not None else value)
        return tuple(out)

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            key: (process(value) if process is not None else value)
            for key, process, value in zip(self.keys, self._results, raw, strict=True)
        }


_REQUIRED = object()
_SQLITE_DATETIME_FORMAT: str = SQLITE_DATETIME()._storage_format  # type: ignore[no-untyped-call]


def _fast_bind_processor(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """`UtcDateTime`'s processing on SQLite in one call (`utc_datetime_text`) instead of
    the decorator's and then SQLite's DATETIME's; None for every other type."""
    if dialect.name != "sqlite" or not isinstance(type_, UtcDateTime):
        return None
    impl = getattr(type_.dialect_impl(dialect), "impl_instance", None)
    if getattr(impl, "_storage_format", None) != _SQLITE_DATETIME_FORMAT:
        return None
    return utc_datetime_text


def utc_datetime_text(value: datetime) -> str:
    """What `UtcDateTime` binds on SQLite: the instant in UTC as SQLite's DATETIME stores
    it, `YYYY-MM-DD HH:MM:SS.ffffff` (tests compare it with SQLAlchemy's own output)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database")
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


async def run_on_connection(engine: Any, function: Any, *args: Any) -> Any:
    """`function(sqlite3_connection, *args)` in the database thread of a connection
    checked out of the engine's pool (so it queues with every other transaction): one
    hand-off for a whole transaction, which `function` begins and ends itself.

    The check-out, the run and the return to the pool happen in one greenlet (as
    SQLAlchemy's own async calls do), not in three (`AsyncEngine.connect`, its raw
    connection, its close): each costs the event loop a greenlet and its switches. The
    pool's connection is taken raw: no `Connection` is built around it (its events and
    state would be for statements this function runs itself). On its return the pool
    resets it as always (a rollback, free when nothing is open: `OneHopConnection`)."""
    return await greenlet_spawn(_run_checked_out, engine.sync_engine, function, args)


def _run_checked_out(sync_engine: Any, function: Any, args: tuple[Any, ...]) -> Any:
    pooled = sync_engine.raw_connection()
    try:
        driver: OneHopConnection = pooled.driver_connection
        return await_(driver.run(function, *args))
    finally:
        pooled.close()


def fetch_one(connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> Any:
    """One row of a statement run on the database thread's raw connection (or None)."""
    cursor = connection.execute(sql, parameters)
    try:
        return cursor.fetchone()
    finally:
        cursor.close()
