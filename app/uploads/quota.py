"""A cap on the bytes one user (`sub`) holds in staging: MAX_STAGED_BYTES_PER_USER.

Without it one token could fill the staging disk for everyone (MAX_OPEN_SESSIONS_PER_USER
sessions of MAX_FILE_SIZE each). A user's staged bytes are the chunks recorded for their
open sessions (one query on the session store) plus the chunk bytes this process is
receiving for them right now. Bytes are counted as they arrive, whatever the order of the
form's fields, so a chunk sent before (or without) `upload_session_id` counts too; beyond
the cap the chunk is cut off with 507 `staging_quota_exceeded` and its partial file
removed.

Cost: the store is asked at most once per `refresh_seconds` per user and process; in
between, chunks this process finished are added to the remembered figure (a refused chunk
is over-counted until the next refresh: the error is on the safe side). Several processes
each count only their own in-flight bytes, so together they may overshoot by what the
others are receiving at that moment: at most a few chunks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.errors import StagingQuotaExceeded
from app.uploads.models import StagedFile
from app.uploads.ports import ChunkWriter

DEFAULT_REFRESH_SECONDS = 1.0
# Past this many users remembered, stale figures are dropped at the next refresh.
MAX_REMEMBERED_USERS = 4096


@dataclass
class _Usage:
    staged_bytes: int = 0
    fetched_at: float = float("-inf")
    receiving_bytes: int = 0


class StagedBytesQuota:
    def __init__(
        self,
        staged_bytes_of: Callable[[str], Awaitable[int]],
        max_bytes_per_user: int,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._staged_bytes_of = staged_bytes_of
        self.max_bytes_per_user = max_bytes_per_user
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    async def writer_factory(
        self, owner_sub: str, new_writer: Callable[[], ChunkWriter]
    ) -> Callable[[], ChunkWriter]:
        """`new_writer`, wrapped so that every byte written counts against the owner."""
        if not self.max_bytes_per_user:
            return new_writer
        await self._refresh(owner_sub)

        def make() -> ChunkWriter:
            return QuotaWriter(new_writer(), self, owner_sub)

        return make

    async def _refresh(self, owner_sub: str) -> None:
        usage = self._usage.get(owner_sub)
        now = self._clock()
        if usage is not None and now - usage.fetched_at < self._refresh_seconds:
            return
        staged = await self._staged_bytes_of(owner_sub)
        if usage is None:
            if len(self._usage) >= MAX_REMEMBERED_USERS:
                self._forget_idle(now)
            usage = self._usage.setdefault(owner_sub, _Usage())
        usage.staged_bytes, usage.fetched_at = staged, now

    def _forget_idle(self, now: float) -> None:
        for sub, usage in list(self._usage.items()):
            if usage.receiving_bytes == 0 and now - usage.fetched_at >= self._refresh_seconds:
                del self._usage[sub]

    def reserve(self, owner_sub: str, size_bytes: int) -> None:
        usage = self._usage.setdefault(owner_sub, _Usage())
        if usage.staged_bytes + usage.receiving_bytes + size_bytes > self.max_bytes_per_user:
            raise StagingQuotaExceeded(
                details={"max_staged_bytes_per_user": self.max_bytes_per_user}
            )
        usage.receiving_bytes += size_bytes

    def settle(self, owner_sub: str, size_bytes: int, *, kept: bool) -> None:
        """A chunk is no longer being received: kept (now a staged file) or dropped."""
        usage = self._usage.setdefault(owner_sub, _Usage())
        usage.receiving_bytes = max(0, usage.receiving_bytes - size_bytes)
        if kept:
            usage.staged_bytes += size_bytes


class QuotaWriter:
    """A ChunkWriter that charges each byte to its owner before the inner writer stores it."""

    def __init__(self, inner: ChunkWriter, quota: StagedBytesQuota, owner_sub: str) -> None:
        self._inner = inner
        self._quota = quota
        self._owner_sub = owner_sub
        self._reserved_bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._inner.size_bytes

    async def write(self, data: bytes | memoryview) -> None:
        self._quota.reserve(self._owner_sub, len(data))
        self._reserved_bytes += len(data)
        await self._inner.write(data)

    async def finish(self) -> StagedFile:
        staged = await self._inner.finish()
        self._settle(kept=True)
        return staged

    async def discard(self) -> None:
        try:
            await self._inner.discard()
        finally:
            self._settle(kept=False)

    def _settle(self, *, kept: bool) -> None:
        reserved, self._reserved_bytes = self._reserved_bytes, 0
        if reserved:
            self._quota.settle(self._owner_sub, reserved, kept=kept)
