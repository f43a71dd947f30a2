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


def migrate_in_fresh_process(database: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MIGRATE_ONCE,
            database["database_url"],
            database.get("database_schema") or "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_schema_revision_names_the_newest_migration() -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == SCHEMA_REVISION


def test_a_new_database_is_migrated_and_a_migrated_one_needs_no_alembic(
    database: dict[str, Any],
) -> None:
    first = migrate_in_fresh_process(database)
    assert first == {"revision": SCHEMA_REVISION, "alembic_loaded": True}

    again = migrate_in_fresh_process(database)
    assert again == {"revision": SCHEMA_REVISION, "alembic_loaded": False}
