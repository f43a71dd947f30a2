"""app.lean_imports in a fresh interpreter (the test process has imported everything
already): sqlalchemy.ext.asyncio without the ORM until a session name is used, and still
a normal package to everyone who imports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, threading
import app.lean_imports  # first, as app.main imports it
import sqlalchemy.ext.asyncio

figures = {"orm_at_start": "sqlalchemy.orm" in sys.modules}
# `import a.b.c` then `a.b.c.X`, as for any package the import system loaded.
figures["qualified"] = sqlalchemy.ext.asyncio.AsyncEngine.__name__
# Threads asking for a session name at once: each gets it, none sees a half-run __init__.
errors, found = [], []
barrier = threading.Barrier(8)
def use():
    barrier.wait()
    try:
        from sqlalchemy.ext.asyncio import AsyncSession
        found.append(AsyncSession.__module__)
    except Exception as error:
        errors.append(repr(error))
threads = [threading.Thread(target=use) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
figures.update(errors=errors, found=sorted(set(found)), orm_after="sqlalchemy.orm" in sys.modules)
try:
    sqlalchemy.ext.asyncio.NoSuchName
except AttributeError as error:
    figures["missing"] = str(error)
print(json.dumps(figures))
"""


def test_the_async_extension_loads_the_orm_only_for_a_session_name_and_in_one_thread() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures == {
        "orm_at_start": False,
        "qualified": "AsyncEngine",
        "errors": [],
        "found": ["sqlalchemy.ext.asyncio.session"],
        "orm_after": True,
        "missing": "module 'sqlalchemy.ext.asyncio' has no attribute 'NoSuchName'",
    }
