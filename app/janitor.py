"""The janitor: expiry and clean-up, as plain one-pass functions plus a thin loop.

* `sweep_expired` marks sessions idle past their expiry `expired` (their records stay
  for `EXPIRED_RETENTION_SECONDS`, so clients get 410, then are purged), deletes their
  staged data and aborts any multipart upload they name; completions whose lease lapsed
  more than the grace period ago are released back to `uploading` (the client may retry)
  and their multipart upload aborted.
* `remove_orphan_staging` deletes what no open session owns: directories of closed or
  unknown sessions, chunk files no record names (a crash between rename and commit),
  and temp files under `incoming/` (a crash mid-chunk).
* `abort_orphan_multipart_uploads` aborts multipart uploads under the service's prefix
  that no open session names (a crash mid-complete).
* Completed sessions keep only their row (chunk and part rows go at completion); rows
  untouched for `COMPLETED_RETENTION_SECONDS` are purged (0 keeps them), after which a
  repeated `complete` or `GET` answers 404.

With `STAGING_BACKEND=s3` the same passes list and delete staged objects (the staging
backend lists sessions by key prefix), and run on every replica at once: each step is
idempotent, so replicas racing over one session only repeat a delete. There, listing one
open session's objects is a LIST request, so a pass lists at most
`S3_OPEN_SESSION_LISTINGS_PER_PASS` open sessions, a fresh random sample each pass on each
replica, instead of every open session (at fleet scale: a LIST per open session per pass
per replica). That is safe because what it looks for, objects no record names (a chunk
request that died between its PutObject and its commit), is rare and goes with the
session in any case when it ends (completion, abort and expiry delete the whole prefix);
the sample only bounds how long such an object can hold space before that. Sessions no
longer open still cost nothing per session: one delimited LIST names 1,000 of them.

Invariants: every state change is a guarded SQL update, and every delete or abort is
idempotent, so several replicas may run passes at once. Anything that could belong to
a request in flight (a temp file, an unrecorded chunk file, a fresh multipart upload)
is only touched once older than the grace period, which must exceed the longest time a
single request may take. Functions take `now`, so tests move the clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from app.container import Container
from app.errors import ServiceError
from app.storage.s3 import PendingMultipartUpload
from app.storage.staging import StagingEntry
from app.uploads.models import SessionState, UploadSession, utc_now

log = structlog.get_logger(__name__)

BATCH_SIZE = 500
MAX_BATCHES_PER_PASS = 100
# S3 staging: open sessions whose staged objects one pass lists (one LIST each), so a pass
# costs the same with 100 open sessions as with a million. With N open sessions and R
# replicas, each session is looked at about every N / (100 R) passes (bench/README.md).
S3_OPEN_SESSION_LISTINGS_PER_PASS = 100
# Its own generator: the process-wide `random` state is not ours to move.
_sampler = random.Random()


class JanitorStore(Protocol):
    async def list_stale_sessions(
        self, *, now: datetime, lease_lapsed_before: datetime, limit: int
    ) -> list[UploadSession]: ...

    async def expire_session(self, session_id: str, *, now: datetime) -> UploadSession | None: ...

    async def release_stale_completion(
        self, session_id: str, *, now: datetime, lease_lapsed_before: datetime
    ) -> UploadSession | None: ...

    async def open_session_ids(self, session_ids: Collection[str]) -> set[str]: ...

    async def chunk_file_names(self, session_ids: Collection[str]) -> set[tuple[str, str]]: ...

    async def open_multipart_upload_ids(self) -> set[str]: ...

    async def purge_closed_sessions(
        self,
        *,
        updated_before: datetime,
        limit: int,
        completed_updated_before: datetime | None = None,
    ) -> int: ...


class JanitorStaging(Protocol):
    async def list_incoming(self) -> list[StagingEntry]: ...

    async def list_session_dirs(self) -> list[str]: ...

    async def list_session_files(self, session_id: str) -> list[StagingEntry]: ...

    async def remove_incoming(self, name: str) -> None: ...

    async def remove_chunk(self, session_id: str, file_name: str) -> None: ...

    async def remove_session(self, session_id: str) -> None: ...

    async def refresh_usage(self) -> int: ...


class JanitorObjects(Protocol):
    async def list_multipart_uploads(self, prefix: str) -> list[PendingMultipartUpload]: ...

    async def abort(self, key: str, upload_id: str) -> None: ...


@dataclass
class JanitorReport:
    expired_sessions: int = 0
    released_completions: int = 0
    purged_sessions: int = 0
    removed_incoming_files: int = 0
    removed_session_dirs: int = 0
    removed_chunk_files: int = 0
    aborted_multipart_uploads: int = 0
    staging_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ----------------------------------------------------------------------------- passes
async def sweep_expired(
    store: JanitorStore,
    staging: JanitorStaging,
    objects: JanitorObjects,
    *,
    now: datetime,
    grace_seconds: float,
    retention_seconds: float,
    report: JanitorReport | None = None,
    forget: Callable[[str], None] | None = None,
    completed_retention_seconds: float = 0,
) -> JanitorReport:
    """`forget`: told each expired session's id, so in-memory state kept for it (eager
    flush's) goes with it. `completed_retention_seconds`: completed sessions untouched
    that long are purged too (0: kept)."""
    report = report or JanitorReport()
    lease_lapsed_before = now - timedelta(seconds=grace_seconds)
    for _ in range(MAX_BATCHES_PER_PASS):
        stale = await store.list_stale_sessions(
            now=now, lease_lapsed_before=lease_lapsed_before, limit=BATCH_SIZE
        )
        for session in stale:
            if session.state is SessionState.COMPLETING:
                released = await store.release_stale_completion(
                    session.id, now=now, lease_lapsed_before=lease_lapsed_before
                )
                if released is None:
                    continue
                report.released_completions += 1
                log.info("janitor.completion_released", session_id=session.id)
                await _abort_quietly(objects, released.object_key, released.multipart_upload_id)
                if released.expires_at > now:
                    continue
            expired = await store.expire_session(session.id, now=now)
            if expired is None:
                continue
            report.expired_sessions += 1
            log.info("janitor.session_expired", session_id=session.id)
            if forget is not None:
                forget(session.id)
            await staging.remove_session(session.id)
            await _abort_quietly(objects, expired.object_key, expired.multipart_upload_id)
        if len(stale) < BATCH_SIZE:
            break
    updated_before = now - timedelta(seconds=retention_seconds)
    completed_before = (
        now - timedelta(seconds=completed_retention_seconds)
        if completed_retention_seconds > 0
        else None
    )
    for _ in range(MAX_BATCHES_PER_PASS):
        purged = await store.purge_closed_sessions(
            updated_before=updated_before,
            limit=BATCH_SIZE,
            completed_updated_before=completed_before,
        )
        report.purged_sessions += purged
        if purged < BATCH_SIZE:
            break
    return report


async def remove_stale_incoming(
    staging: JanitorStaging,
    *,
    now: datetime,
    grace_seconds: float,
    report: JanitorReport | None = None,
) -> JanitorReport:
    """Temp files of chunk requests that died (a crash, a kill) before finishing."""
    report = report or JanitorReport()
    cutoff = now - timedelta(seconds=grace_seconds)
    for entry in await staging.list_incoming():
        if entry.modified_at < cutoff:
            await staging.remove_incoming(entry.name)
            report.removed_incoming_files += 1
    return report


async def remove_orphan_staging(
    store: JanitorStore,
    staging: JanitorStaging,
    *,
    now: datetime,
    grace_seconds: float,
    report: JanitorReport | None = None,
    listings_per_pass: int | None = None,
) -> JanitorReport:
    """`listings_per_pass`: list the files of at most this many open sessions, a random
    sample (None: all of them; the disk backend's listings are local directory reads)."""
    report = await remove_stale_incoming(
        staging, now=now, grace_seconds=grace_seconds, report=report
    )
    cutoff = now - timedelta(seconds=grace_seconds)
    session_ids = await staging.list_session_dirs()
    open_ids = await store.open_session_ids(session_ids)
    for session_id in session_ids:
        if session_id not in open_ids:
            # Closed, purged or never known: nothing will ever read these chunks.
            await staging.remove_session(session_id)
            report.removed_session_dirs += 1
    listed = sorted(open_ids)
    if listings_per_pass is not None and len(listed) > listings_per_pass:
        listed = _sampler.sample(listed, listings_per_pass)
    recorded = await store.chunk_file_names(listed)
    for session_id in listed:
        for entry in await staging.list_session_files(session_id):
            # A young unrecorded file may be a chunk whose record is being committed.
            if (session_id, entry.name) not in recorded and entry.modified_at < cutoff:
                await staging.remove_chunk(session_id, entry.name)
                report.removed_chunk_files += 1
    return report


async def abort_orphan_multipart_uploads(
    store: JanitorStore,
    objects: JanitorObjects,
    *,
    key_prefix: str,
    now: datetime,
    grace_seconds: float,
    report: JanitorReport | None = None,
) -> JanitorReport:
    report = report or JanitorReport()
    prefix = f"{key_prefix.strip('/')}/" if key_prefix.strip("/") else ""
    cutoff = now - timedelta(seconds=grace_seconds)
    # A completion names its upload right after starting it; the grace covers the gap.
    candidates = [
        upload
        for upload in await objects.list_multipart_uploads(prefix)
        if upload.initiated_at < cutoff
    ]
    if not candidates:
        return report
    named = await store.open_multipart_upload_ids()
    for upload in candidates:
        if upload.upload_id in named:
            continue
        if await _abort_quietly(objects, upload.key, upload.upload_id):
            report.aborted_multipart_uploads += 1
            log.info("janitor.multipart_aborted", key=upload.key, upload_id=upload.upload_id)
    return report


async def run_pass(container: Container, *, now: datetime | None = None) -> JanitorReport:
    """One full pass with the service's settings: what the loop and the command run."""
    settings = container.settings
    now = now or utc_now()
    report = await sweep_expired(
        container.store,
        container.staging,
        container.objects,
        now=now,
        grace_seconds=settings.orphan_grace_seconds,
        retention_seconds=settings.expired_retention_seconds,
        completed_retention_seconds=settings.completed_retention_seconds,
        forget=container.uploads.eager.forget if container.uploads.eager is not None else None,
    )
    await remove_orphan_staging(
        container.store,
        container.staging,
        now=now,
        grace_seconds=settings.orphan_grace_seconds,
        report=report,
        listings_per_pass=(
            S3_OPEN_SESSION_LISTINGS_PER_PASS if settings.staging_backend == "s3" else None
        ),
    )
    await abort_orphan_multipart_uploads(
        container.store,
        container.objects,
        key_prefix=settings.s3_key_prefix,
        now=now,
        grace_seconds=settings.orphan_grace_seconds,
        report=report,
    )
    report.staging_bytes = await container.staging.refresh_usage()
    log.info("janitor.pass_finished", **report.as_dict())
    return report


async def _abort_quietly(objects: JanitorObjects, key: str | None, upload_id: str | None) -> bool:
    if not key or not upload_id:
        return False
    try:
        await objects.abort(key, upload_id)
    except ServiceError:
        # Already gone (another replica) or S3 down: the orphan pass retries later.
        return False
    return True


# ------------------------------------------------------------------------------- loop
class JanitorLoop:
    """Runs `run_pass` every `JANITOR_INTERVAL_SECONDS` while the service runs.
    At start-up it first removes stale temp files left by a crash."""

    def __init__(self, container: Container) -> None:
        self._container = container
        self._task: asyncio.Task[None] | None = None
        self._jitter = random.Random()  # not the process-wide state, as `_sampler`

    def start(self) -> JanitorLoop:
        self._task = asyncio.create_task(self._run(), name="janitor")
        return self

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        container = self._container
        interval_seconds = container.settings.janitor_interval_seconds
        await self._guarded(
            remove_stale_incoming(
                container.staging,
                now=utc_now(),
                grace_seconds=container.settings.orphan_grace_seconds,
            )
        )
        if interval_seconds <= 0:
            return
        while True:
            await self._guarded(run_pass(container))
            # Jitter keeps replicas started together from sweeping in lock-step.
            await asyncio.sleep(interval_seconds * self._jitter.uniform(0.9, 1.1))

    @staticmethod
    async def _guarded(work: Any) -> None:
        try:
            await work
        except Exception as error:  # a failed pass must not end the loop
            log.warning("janitor.pass_failed", error_type=type(error).__name__, exc_info=True)
