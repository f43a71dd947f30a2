"""Migrations at start-up on real SQLite and PostgreSQL: a new database is brought to the
newest revision by alembic; one already there is recognised without importing alembic,
which the service then never loads (it would cost memory for as long as it runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from app.storage.database import SCHEMA_REVISION, alembic_config

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter, so modules the test process already loaded do not count.
MIGRATE_ONCE = """
import asyncio, json, sys
from app.storage.database import create_engine, current_revision, migrate

async def main(url, schema):
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema=schema)
    async with engine.connect() as connection:
        revision = await connection.run_sync(current_revision)
    await engine.dispose()
    print(json.dumps({"revision": revision, "alembic_loaded": "alembic" in sys.modules}))

asyncio.run(main(sys.argv[1], sys.argv[2] or None))
"""


def run_in_fresh_process(script: str, database: dict[str, Any]) -> Any:
    """`script` run by a new interpreter with the database's URL and schema as its
    arguments; what it printed last, as JSON."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            database["database_url"],
            database.get("database_schema") or "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_schema_revision_names_the_newest_migration() -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == SCHEMA_REVISION


def test_a_new_database_is_migrated_and_a_migrated_one_needs_no_alembic(
    database: dict[str, Any],
) -> None:
    first = run_in_fresh_process(MIGRATE_ONCE, database)
    assert first == {"revision": SCHEMA_REVISION, "alembic_loaded": True}

    again = run_in_fresh_process(MIGRATE_ONCE, database)
    assert again == {"revision": SCHEMA_REVISION, "alembic_loaded": False}


# Brings a database to 0008, writes sessions and chunks as 0008 knew them, then migrates
# to the newest revision and prints each session's running total of chunk bytes.
BACKFILL = """
import asyncio, json, sys
from alembic import command
from sqlalchemy import text
from app.storage.database import alembic_config, create_engine

ROW = (
    "INSERT INTO upload_sessions (id, owner_sub, main_service_file_id, original_file_name,"
    " state, created_at, updated_at, expires_at) VALUES (:id, 'u', 1, 'a.wav', :state,"
    " '2026-12-07 00:00:00', '2026-12-07 00:00:00', '2099-01-01 00:00:00')"
)
CHUNK = (
    "INSERT INTO upload_chunks (session_id, chunk_index, size_bytes, sha256, file_name,"
    " received_at) VALUES (:id, :index, :size, 'x', 'f', '2026-12-07 00:00:00')"
)

def upgrade(connection, revision):
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)

async def main(url, schema):
    engine = create_engine(url, schema=schema)
    async with engine.begin() as connection:
        if schema:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await connection.run_sync(upgrade, "0008_tus_concat_parts")
        for id, state, sizes in (("open", "uploading", [5, 7]), ("empty", "uploading", []),
                                 ("completing", "completing", [11]), ("done", "completed", [3])):
            await connection.execute(text(ROW), {"id": id, "state": state})
            for index, size in enumerate(sizes):
                await connection.execute(text(CHUNK), {"id": id, "index": index, "size": size})
    async with engine.begin() as connection:
        await connection.run_sync(upgrade, "head")
        rows = await connection.execute(text("SELECT id, chunk_bytes FROM upload_sessions"))
        print(json.dumps(dict(sorted((str(r[0]), int(r[1])) for r in rows))))
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2] or None))
"""


def test_migration_0009_counts_the_chunks_of_sessions_that_can_still_record(
    database: dict[str, Any],
) -> None:
    totals = run_in_fresh_process(BACKFILL, database)
    # A completed session records no more chunks: its total is never read.
    assert totals == {"completing": 11, "done": 0, "empty": 0, "open": 12}
