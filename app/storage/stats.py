"""Read-only figures for the metrics scrape: sessions by state, bytes held in staging.

Both are read when Prometheus scrapes, so they cost nothing between scrapes. Neither
takes a lock a writer would wait on: counts in the database, a directory walk in a
worker thread.

At fleet scale (millions of session rows) the open sessions (uploading, completing) are
few and counted on every scrape through the `state` index; the closed ones (completed,
expired, aborted, failed: nearly all rows, bounded by the retention settings) are
counted through the (state, updated_at) index; a count that took longer than
CLOSED_COUNT_CHEAP_SECONDS is repeated only once CLOSED_COUNT_COST_RATIO times its own
time has passed: on a small database every scrape is exact, on 10 M rows the count
costs the database about 1% of one core per replica (bench/README.md, "Ten million sessions").
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.tables import upload_sessions
from app.uploads.models import SessionState, utc_now

S = upload_sessions.c

CLOSED_COUNT_COST_RATIO = 100.0
# A closed count faster than this is simply repeated at every scrape (exact figures).
CLOSED_COUNT_CHEAP_SECONDS = 0.25
_OPEN = (SessionState.UPLOADING.value, SessionState.COMPLETING.value)


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


class SessionStateCounts:
    """Sessions per state as a client would see them (an uploading session idle past its
    expiry counts as expired before the janitor marks it); every state is present."""

    def __init__(
        self, engine: AsyncEngine, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self._monotonic = monotonic
        self._closed: dict[str, int] = {}
        self._closed_next_at = 0.0

    async def counts(self, *, now: datetime | None = None) -> dict[SessionState, int]:
        now = now or utc_now()
        counts = dict.fromkeys(SessionState, 0)
        overdue = (S.state == SessionState.UPLOADING.value) & (S.expires_at <= now)
        effective_state = case((overdue, SessionState.EXPIRED.value), else_=S.state).label(
            "effective_state"
        )
        open_query = (
            select(effective_state, func.count())
            .where(S.state.in_(_OPEN))
            .group_by(effective_state)
        )
        async with self.engine.connect() as conn:
            for state, count in (await conn.execute(open_query)).all():
                counts[SessionState(state)] += int(count)
            if self._monotonic() >= self._closed_next_at:
                started = self._monotonic()
                closed_query = (
                    select(S.state, func.count()).where(S.state.not_in(_OPEN)).group_by(S.state)
                )
                self._closed = {
                    str(state): int(count)
                    for state, count in (await conn.execute(closed_query)).all()
                }
                took = self._monotonic() - started
                self._closed_next_at = (
                    started + took * CLOSED_COUNT_COST_RATIO
                    if took >= CLOSED_COUNT_CHEAP_SECONDS
                    else 0.0
                )
        for state, count in self._closed.items():
            if state in SessionState._value2member_map_:
                counts[SessionState(state)] += count
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
