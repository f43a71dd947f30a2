"""Read-only figures for the metrics scrape: sessions by state, bytes held in staging.

Both are read when Prometheus scrapes, so they are always current and cost nothing
between scrapes. Neither takes a lock a writer would wait on for long: one grouped
count in the database, one directory walk in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.tables import upload_sessions
from app.uploads.models import SessionState, utc_now

S = upload_sessions.c


async def count_sessions_by_state(
    engine: AsyncEngine, *, now: datetime | None = None
) -> dict[SessionState, int]:
    """Sessions per state as a client would see them: an uploading session idle past its
    expiry counts as expired even before the janitor marks it. Every state is present."""
    now = now or utc_now()
    effective_state = case(
        (
            (S.state == SessionState.UPLOADING.value) & (S.expires_at <= now),
            SessionState.EXPIRED.value,
        ),
        else_=S.state,
    ).label("effective_state")
    query = select(effective_state, func.count()).group_by(effective_state)
    counts = dict.fromkeys(SessionState, 0)
    async with engine.connect() as conn:
        for state, count in (await conn.execute(query)).all():
            if state in SessionState._value2member_map_:
                counts[SessionState(state)] += int(count)
    return counts


async def staging_bytes(*directories: Path) -> int:
    """Bytes in files under the given staging directories (received and partial chunks;
    not the SQLite file that may share the staging root)."""
    return await asyncio.to_thread(_directory_bytes, directories)


def _directory_bytes(roots: tuple[Path, ...]) -> int:
    total = 0
    stack = list(roots)
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue  # removed while we walked: it holds nothing any more
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total
