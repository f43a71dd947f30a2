"""aiosqlite with one thread hop per statement instead of four.

SQLAlchemy's aiosqlite adapter opens a cursor, executes, fetches and closes it, and
aiosqlite runs each of those in its database thread: four hand-offs between the event
loop and that thread per statement. On this service's 2-core VMs a hand-off costs
~60 µs of CPU (measured: `run_in_executor` round trip of a no-op under uvloop), and the
chunk path runs ~7 statements, so the hand-offs cost more than the SQL. Here a
statement's cursor is opened, executed, drained and closed in one call in the
database thread; the rows then wait in memory, which is fine for this service's small
result sets (no query here streams rows).

Everything else (the thread, the connection, commit, rollback, close) is aiosqlite's,
at the version pinned in requirements.txt; `_execute` is how aiosqlite's own methods
reach its thread.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL

Row = Any
Description = tuple[tuple[Any, ...], ...] | None


def _run(
    connection: sqlite3.Connection, sql: str, parameters: Any, *, many: bool
) -> tuple[Description, int, int | None, list[Row]]:
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
        run = partial(_run, many=many)
        self.description, self.rowcount, self.lastrowid, rows = await self._connection.run(
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


class OneHopConnection(aiosqlite.Connection):
    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def run(self, function: Any, *args: Any) -> Any:
        """`function(sqlite3_connection, *args)` in the database thread."""
        return await self._execute(  # type: ignore[no-untyped-call]
            lambda: function(self._conn, *args)
        )


def connector(url: URL, *, timeout: float) -> Any:
    """An `async_creator` for SQLAlchemy's `sqlite+aiosqlite` dialect. The connection takes
    the arguments the dialect itself derives from the URL (`?mode=ro&uri=true`, ...), so
    swapping the cursor changes nothing of how a database URL is read."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(url)
    kwargs = {**kwargs, "timeout": timeout}

    async def connect() -> OneHopConnection:
        connection = OneHopConnection(
            partial(sqlite3.connect, *args, **kwargs), iter_chunk_size=64
        )
        # As SQLAlchemy does for aiosqlite's own connections: never keep the process up.
        connection._thread.daemon = True
        await connection
        return connection

    return connect
