"""Database engine set-up and schema migrations, for SQLite and PostgreSQL.

SQLite: one pooled connection per process (transactions queue on the pool), one
thread hand-off per statement (sqlite_driver), WAL journal, a busy timeout for other
processes, and every transaction begun IMMEDIATE, so two writers queue for the lock
instead of failing when a read turns into a write.
PostgreSQL: each state change starts by updating the session row, whose row lock
serialises all writers of one session.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.storage import sqlite_driver

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_PATH = Path(__file__).with_name("migrations")
# An arbitrary constant: replicas starting together take turns migrating.
_MIGRATION_LOCK_ID = 7_311_024_001
# The newest migration in migrations/versions (a test checks they agree). A database
# already there is not handed to alembic: importing alembic (with mako, and pygments
# through mako) would cost the service ~10 MB of memory for as long as it runs.
SCHEMA_REVISION = "0009_session_chunk_bytes"


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per process: writers then queue on the pool (an asyncio wait)
        # instead of on SQLite's busy handler, which sleeps in steps of up to 100 ms and
        # made every concurrent chunk wait milliseconds for nothing. Several processes on
        # one file still meet the busy handler; that is what PostgreSQL is for.
        engine = create_async_engine(
            url,
            json_serializer=strict_json_dumps,
            async_creator=sqlite_driver.connector(parsed, timeout=30),
            pool_size=1,
            max_overflow=0,
            pool_timeout=120,
        )
        _make_sqlite_transactions_immediate(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args=connect_args,
        json_serializer=strict_json_dumps,
    )


def strict_json_dumps(value: object) -> str:
    """JSON columns refuse NaN/Infinity before the write (PostgreSQL would refuse them in
    the row, after the object was committed to S3; SQLite would store invalid JSON)."""
    return json.dumps(value, allow_nan=False)


def _make_sqlite_transactions_immediate(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config  # only when migrating: see SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_PATH))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def migrate(
    engine: AsyncEngine, *, schema: str | None = None, in_child_process: bool = False
) -> None:
    """Bring the schema to the newest revision (safe with several replicas at once).

    `in_child_process`: a database behind the newest revision is migrated by a short-lived
    Python process instead of this one. Importing alembic, mako and the migration scripts
    costs ~13 MB of memory, and dropping the modules afterwards gives back none of it
    (measured: Python's object arenas stay fragmented), so the long-running service
    never imports them; one-off commands and tests migrate in-process."""
    if in_child_process:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current_revision)
        if revision != SCHEMA_REVISION:
            await _migrate_in_child(engine, schema)
        return
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await connection.run_sync(_upgrade)


# The URL (it may hold a password) goes through the child's environment, not its argv.
_CHILD_URL_VARIABLE = "AUDIO_UPLOAD_MIGRATE_URL"


async def _migrate_in_child(engine: AsyncEngine, schema: str | None) -> None:
    environment = {
        **os.environ,
        _CHILD_URL_VARIABLE: engine.url.render_as_string(hide_password=False),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.storage.database",
        schema or "",
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await child.communicate()
    # Alembic's "Running upgrade ..." lines, as an in-process migration logs them.
    sys.stderr.write(stderr.decode(errors="replace"))
    if child.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"schema migration failed (exit {child.returncode}): {tail[0]}")


def _child_main(schema: str) -> None:
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    engine = create_engine(os.environ[_CHILD_URL_VARIABLE], schema=schema or None)

    async def run() -> None:
        try:
            await migrate(engine, schema=schema or None)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _upgrade(connection: Connection) -> None:
    if current_revision(connection) == SCHEMA_REVISION:
        return
    from alembic import command  # only when migrating: see SCHEMA_REVISION

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def current_revision(connection: Connection) -> str | None:
    """The revision alembic last recorded, read without alembic; None on a new database."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if revision is None else str(revision)


if __name__ == "__main__":  # the child of `migrate(..., in_child_process=True)`
    _child_main(sys.argv[1] if len(sys.argv) > 1 else "")
