"""Records do not grow without bound: a completed session keeps only its row (its chunk
and part rows go in the completing transaction) and still answers a repeated complete
and GET /upload/{id}; completed rows are purged after COMPLETED_RETENTION_SECONDS
(0 keeps them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from app.dev.keys import KeyPair
from app.janitor import run_pass
from app.main import create_app
from app.settings import Settings
from app.storage.tables import session_leases, upload_chunks, upload_parts
from app.uploads.models import utc_now
from tests.conftest import running
from tests.manual_janitor import settings_factory_without_janitor_loop  # noqa: F401
from tests.support import UploadApi, assert_error, split

RETENTION_SECONDS = 3600


async def _rows(engine: Any, table: Any, session_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(table).where(table.c.session_id == session_id)
        )
    return int(count or 0)


async def test_completion_drops_chunk_rows_and_retention_purges_the_session(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    settings = settings_factory(completed_retention_seconds=RETENTION_SECONDS)
    app = create_app(settings)
    async with running(app) as http:
        api = UploadApi(http, keypair)
        engine = app.state.container.engine
        chunks = split(audio_wav, 100_000)
        session_id = await api.session()
        await api.send_all(session_id, chunks)
        assert await _rows(engine, upload_chunks, session_id) == len(chunks)
        done = await api.complete(session_id, len(chunks))
        assert done.status_code == 200, done.text
        for table in (upload_chunks, upload_parts, session_leases):
            assert await _rows(engine, table, session_id) == 0

        status = (await api.status(session_id)).json()["data"]
        assert status["state"] == "completed"
        assert status["received_chunks"] == list(range(len(chunks)))
        assert status["received_bytes"] == len(audio_wav)
        assert status["result"] == done.json()["data"]
        again = await api.complete(session_id, len(chunks))
        assert again.json() == done.json()

        report = await run_pass(app.state.container, now=utc_now() + timedelta(seconds=60))
        assert report.purged_sessions == 0
        later = utc_now() + timedelta(seconds=RETENTION_SECONDS + 60)
        report = await run_pass(app.state.container, now=later)
        assert report.purged_sessions == 1
        assert_error(await api.status(session_id), 404, "session_not_found")


async def test_zero_retention_keeps_completed_sessions(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    app = create_app(settings_factory(completed_retention_seconds=0))
    async with running(app) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        await api.send_all(session_id, [audio_wav])
        assert (await api.complete(session_id, 1)).status_code == 200
        later = utc_now() + timedelta(days=3650)
        report = await run_pass(app.state.container, now=later)
        assert report.purged_sessions == 0
        assert (await api.status(session_id)).json()["data"]["state"] == "completed"
