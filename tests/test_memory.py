"""Start-up tunes glibc's malloc for streaming (`app.main.tune_malloc`) and hands freed
heap memory back to the OS (`app.main.release_freed_heap`); the served process stays
lean (it migrates the database in a child process and loads no console extras), and its
resident memory after start-up is bounded."""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import LocalS3Server
from app.main import IdleHeapTrimmer
from app.settings import Settings
from app.storage.database import SCHEMA_REVISION
from tests.processes import ServiceProcess as ProcessUnderTest
from tests.processes import make_wav, service_env
from tests.service_process import ServiceProcess, settings_env

REPO = Path(__file__).resolve().parents[1]

GLIBC = sys.platform.startswith("linux") and ctypes.util.find_library("c") == "libc.so.6"

# A fresh interpreter, so the figures are not mixed with the test run's own heap. Blocks
# of 64 KiB come from malloc's heap (below its mmap threshold, above Python's small-object
# allocator); the last one stays alive, so glibc cannot give the freed ones back by
# shrinking the heap's top and keeps them until asked.
PROBE = """
import json
from pathlib import Path
from app.main import release_freed_heap

def rss_anon_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

blocks = [bytes(64 * 1024) for _ in range(800)]
pin = bytes(64 * 1024)
del blocks
before = rss_anon_bytes()
release_freed_heap()
print(json.dumps({"before": before, "after": rss_anon_bytes()}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    figures = json.loads(done.stdout)
    assert figures["before"] - figures["after"] > 30 * 1024 * 1024


# The app built the way `uvicorn app.main:app` builds it (module attribute `app`, settings
# from the environment), then a streaming server's allocation pattern: each 1 MiB body
# arrives as 64 KiB pieces appended to a buffer and handed on as `bytes`. With glibc's
# defaults this faults in about two pages per 4 KiB received, every time.
STREAMING_PROBE = """
import json, resource
import app.main

app.main.app
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
piece = bytes(64 * 1024)
before = faults()
for _ in range(256):
    buffer = bytearray()
    for _ in range(16):
        buffer += piece
    body = bytes(buffer)
    del buffer, body
print(json.dumps({"faults": faults() - before, "tuned": app.main.tune_malloc()}))
"""


def run_streaming_probe(tmp_path: Path, **extra_env: str) -> dict[str, object]:
    keypair = KeyPair.generate()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(
        {
            "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": "probe-bucket",
            "LOCAL_TEMP_CHUNK_PATH": str(tmp_path / "staging"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}",
            **extra_env,
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", STREAMING_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_built_app_streams_without_page_faults(tmp_path: Path) -> None:
    figures = run_streaming_probe(tmp_path)
    pages_received = 256 * 1024 * 1024 // 4096
    # Tuned: the buffers are reused from the heap (~500 faults here); untuned ~2 per page.
    assert isinstance(figures["faults"], int) and figures["faults"] < pages_received // 20


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_malloc_settings_from_the_environment_win(tmp_path: Path) -> None:
    figures = run_streaming_probe(
        tmp_path, MALLOC_ARENA_MAX="4", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576"
    )
    assert figures["tuned"] == {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024}


# A fresh interpreter, so modules the test process already loaded do not count.
MIGRATE_IN_CHILD = """
import asyncio, json, sys
from app.storage.database import create_engine, current_revision, migrate

async def main(url, schema):
    engine = create_engine(url, schema=schema)
    await migrate(engine, schema=schema, in_child_process=True)
    async with engine.connect() as connection:
        revision = await connection.run_sync(current_revision)
    await engine.dispose()
    print(json.dumps({"revision": revision, "alembic_loaded": "alembic" in sys.modules}))

asyncio.run(main(sys.argv[1], sys.argv[2] or None))
"""


def test_a_child_process_migrates_and_the_caller_never_loads_alembic(
    database: dict[str, Any],
) -> None:
    for _ in range(2):  # a new database, then one already migrated
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                MIGRATE_IN_CHILD,
                database["database_url"],
                database.get("database_schema") or "",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        figures = json.loads(done.stdout.splitlines()[-1])
        assert figures == {"revision": SCHEMA_REVISION, "alembic_loaded": False}


def test_a_failed_migration_in_a_child_stops_start_up_with_its_error(tmp_path: Path) -> None:
    # A database a newer release migrated: this one's alembic does not know its revision.
    database = tmp_path / "newer.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    probe = """
import asyncio, sys
from app.storage.database import create_engine, migrate
engine = create_engine(f"sqlite+aiosqlite:///{sys.argv[1]}")
try:
    asyncio.run(migrate(engine, in_child_process=True))
except RuntimeError as error:
    print("refused:", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe, str(database)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.startswith("refused: schema migration failed (exit 1)"), done.stderr
    assert "9999_from_the_future" in done.stdout


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_served_process_is_lean_after_start_up(settings: Settings) -> None:
    """`uvicorn app.main:app` on a new database (so the migration runs): ~105 MiB here
    (110 MB, bench/README.md "Memory"); 134 MiB before it migrated in a child and dropped
    the console extras, ~126 MiB before the lazy imports and the trimmed endpoint data,
    ~116 MiB before SQLAlchemy's ORM and httpx were left out and botocore's data read
    into plain dicts (test below). Loose: only a regression of ~8 MiB or more fails."""
    service = ServiceProcess(settings_env(settings)).start()
    try:
        assert service.process is not None
        rss_mib = status_kib(service.process.pid, "VmRSS") / 1024
    finally:
        service.stop()
    assert rss_mib <= 113


# The served app built and started as `uvicorn app.main:app` builds it (module attribute
# `app`, settings from the environment, its lifespan run), in a fresh interpreter.
STARTED_PROBE = """
import asyncio, json, sys
import app.main

async def main():
    application = app.main.app
    async with application.router.lifespan_context(application):
        loaded = sorted(name for name in sys.argv[1:] if sys.modules.get(name) is not None)
        blocked = sorted(name for name in sys.modules if sys.modules[name] is None)
    print(json.dumps({"loaded": loaded, "blocked": blocked}))

asyncio.run(main())
"""


def test_the_started_service_has_not_loaded_what_it_needs_only_later(settings: Settings) -> None:
    """Modules the idle service does not need stay unloaded until used (each is memory
    for as long as the process runs; bench/README.md "Memory"): mutagen until the first
    completion's audio check, the PostgreSQL dialect on SQLite, pydantic.v1 (FastAPI's
    check for v1 models, kept out while routes are built and importable again after),
    the migration tool, the console extras, SQLAlchemy's ORM (sqlalchemy.ext.asyncio
    completes itself on first use of a session name) and httpx (JWKS and webhooks only;
    its command-line module stays blocked for good)."""
    on_sqlite = settings.resolved_database_url.startswith("sqlite")
    lazy = ["mutagen", "pydantic.v1", "alembic", "rich", "pygments", "typer", "sqlalchemy.orm"]
    if on_sqlite:
        lazy.append("sqlalchemy.dialects.postgresql")
    if not settings.main_service_notify_url and not settings.main_service_jwks_url:
        lazy.append("httpx")
    done = subprocess.run(
        [sys.executable, "-c", STARTED_PROBE, *lazy],
        cwd=REPO,
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures == {"loaded": [], "blocked": ["httpx._main"]}


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
async def test_the_heap_is_trimmed_once_after_work_and_not_while_idle() -> None:
    trimmer = IdleHeapTrimmer(interval_seconds=0.1).start()
    try:
        await asyncio.sleep(0.5)  # whatever the test run itself did before is settled
        settled = trimmer.trims
        await asyncio.sleep(0.5)
        assert trimmer.trims == settled  # quiet: nothing freed by work, nothing trimmed

        # Busy (CPU in a worker thread, as part reads and hashing are), then quiet.
        def burn(seconds: float) -> None:
            until = time.process_time() + seconds
            while time.process_time() < until:
                sum(range(1000))

        await asyncio.to_thread(burn, 0.5)
        deadline = time.monotonic() + 10
        while trimmer.trims == settled and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert trimmer.trims == settled + 1

        # Quiet since: one trim per burst of work, not one per interval.
        await asyncio.sleep(0.5)
        assert trimmer.trims == settled + 1
    finally:
        await trimmer.stop()


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


@pytest.mark.skipif(not GLIBC, reason="reads /proc; the trim is glibc's")
async def test_a_burst_of_chunks_is_bounded_and_given_back_once_idle(
    keypair: KeyPair, s3_server: LocalS3Server, tmp_path: Path
) -> None:
    """8 sessions at once, two 8 MiB chunks of real audio each, eager flush on (the
    default): 16 parts of 8 MiB go to S3 while and after chunks arrive. Loose bounds: the
    peak above idle (~40 MB here; bench/README.md "Memory": 32 x 16 MiB x 4 adds ~75 MB),
    and the process back near idle once quiet (IdleHeapTrimmer; without it the peak
    stayed)."""
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    env = service_env(
        keypair,
        s3_server.endpoint_url,
        bucket,
        {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        tmp_path / "staging",
    )
    audio = make_wav(tmp_path / "burst.wav", 8 * 1024 * 1024 / 176_400)[: 8 * 1024 * 1024]
    service = ProcessUnderTest(env, tmp_path / "run").start()
    try:
        assert service.process is not None
        pid = service.process.pid
        idle_kib = rss_kib(pid)
        token = keypair.token("burst")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as http:

            async def upload(number: int) -> None:
                init = await http.post(
                    "/upload/init",
                    json={"main_service_file_id": number, "original_file_name": "burst.wav"},
                    headers=headers,
                )
                assert init.status_code == 200, init.text
                session_id = init.json()["data"]["upload_session_id"]
                for index in range(2):
                    sent = await http.post(
                        "/upload/chunk",
                        data={"upload_session_id": session_id, "chunk_index": str(index)},
                        files={"chunk": ("burst.wav", audio, "application/octet-stream")},
                        headers=headers,
                    )
                    assert sent.status_code == 200, sent.text

            await asyncio.gather(*(upload(number) for number in range(1, 9)))

            # The peak includes the background flush those chunks started: wait for it.
            s3: Any = s3_server.client()

            def parts_flushed() -> int:
                listing = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                return sum(
                    len(
                        s3.list_parts(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        ).get("Parts", [])
                    )
                    for upload in listing
                )

            deadline = time.monotonic() + 120
            while parts_flushed() < 16 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert parts_flushed() == 16

            peak_kib = status_kib(pid, "VmHWM")
            assert (peak_kib - idle_kib) / 1024 < 100  # ~40 MB here

            deadline = time.monotonic() + 90
            while rss_kib(pid) - idle_kib > 30 * 1024 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert (rss_kib(pid) - idle_kib) / 1024 <= 30, (idle_kib, peak_kib, rss_kib(pid))
    finally:
        service.stop()
