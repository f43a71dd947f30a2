"""The service's parts, built once at start-up from the settings and closed at shutdown."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keys import key_source_from
from app.auth.tokens import TokenVerifier
from app.metrics import Metrics
from app.notify.delivery import OutboxNotifier
from app.notify.outbox import SqlOutbox
from app.notify.wiring import build_notifier
from app.settings import Settings
from app.storage.database import create_engine, migrate
from app.storage.leases import SqlLeaseStore
from app.storage.parts_store import SqlPartStore
from app.storage.resumable import SqlResumableRecords, SqlUploadLocks
from app.storage.s3 import S3MultipartStore
from app.storage.sql_store import SqlSessionStore
from app.storage.staging import DiskStaging
from app.storage.staging_s3 import S3Staging
from app.storage.stats import SessionStateCounts, staging_bytes
from app.uploads import buffer_budget
from app.uploads.audio import AudioFacts, inspect_audio, sniff_head
from app.uploads.quota import StagedBytesQuota
from app.uploads.service import AudioInspector, HeadSniffer, UploadPolicy, UploadService


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    store: SqlSessionStore
    staging: DiskStaging | S3Staging
    objects: S3MultipartStore
    uploads: UploadService
    verifier: TokenVerifier
    stack: AsyncExitStack
    metrics: Metrics = field(default_factory=Metrics)
    # --- main-service notification (None when MAIN_SERVICE_NOTIFY_URL is unset)
    outbox: SqlOutbox | None = None
    notifier: OutboxNotifier | None = None
    # --- per-user staging quota (None when MAX_STAGED_BYTES_PER_USER is 0)
    quota: StagedBytesQuota | None = None
    # --- the resumable front doors (tus, IETF): protocol records, one writer per upload
    resumable_records: SqlResumableRecords = field(init=False)
    upload_locks: SqlUploadLocks = field(init=False)

    def __post_init__(self) -> None:
        self.resumable_records = SqlResumableRecords(self.engine)
        self.upload_locks = SqlUploadLocks(SqlLeaseStore(self.engine))

    async def close(self) -> None:
        await self.stack.aclose()


def build_verifier(settings: Settings) -> TokenVerifier:
    return TokenVerifier(
        key_source_from(settings),
        algorithm=settings.jwt_algorithm,
        issuer=settings.expected_jwt_issuer,
        audience=settings.expected_jwt_audience,
        leeway_seconds=settings.jwt_leeway_seconds,
        require_file_id=settings.jwt_require_file_id_claim,
    )


def audio_inspector(settings: Settings) -> AudioInspector:
    allowed = settings.allowed_audio_formats

    def inspect(stream: BinaryIO, file_name: str) -> AudioFacts:
        return inspect_audio(stream, file_name, allowed)

    return inspect


def head_sniffer(settings: Settings) -> HeadSniffer:
    allowed = settings.allowed_audio_formats

    def sniff(stream: BinaryIO, file_name: str) -> str | None:
        return sniff_head(stream, file_name, allowed)

    return sniff


def policy_from(settings: Settings) -> UploadPolicy:
    return UploadPolicy(
        max_chunk_size=settings.max_chunk_size,
        max_file_size=settings.max_file_size,
        max_chunks=settings.max_chunks,
        session_ttl_seconds=settings.session_ttl_seconds,
        completion_lease_seconds=settings.completion_lease_seconds,
        allowed_extensions=settings.allowed_audio_extensions,
        key_prefix=settings.s3_key_prefix,
        part_size_bytes=settings.s3_part_size_bytes,
        part_concurrency=settings.s3_max_concurrency,
        max_open_sessions_per_user=settings.max_open_sessions_per_user,
        eager_flush=settings.eager_flush,
    )


async def build_container(
    settings: Settings,
    verifier: TokenVerifier,
    metrics: Metrics | None = None,
    *,
    background_loops: bool = True,
    migrate_in_child_process: bool = False,
) -> Container:
    """All parts, opened. `background_loops=False` for one-off commands: no delivery loop.
    `migrate_in_child_process`: the long-running service's start-up (storage.database.migrate)."""
    metrics = metrics or Metrics()
    stack = AsyncExitStack()
    try:
        disk = DiskStaging(
            settings.local_temp_chunk_path,
            fsync=settings.staging_fsync,
            max_bytes=settings.staging_max_bytes,
            min_free_bytes=settings.staging_min_free_bytes,
        )
        disk.prepare()
        stack.push_async_callback(verifier.close)  # a JWKS fetch in flight
        buffer_budget.configure(settings.part_buffer_budget_bytes)
        engine = create_engine(settings.resolved_database_url, schema=settings.database_schema)
        stack.push_async_callback(engine.dispose)
        if settings.auto_migrate:
            await migrate(
                engine,
                schema=settings.database_schema,
                in_child_process=migrate_in_child_process,
            )
        objects = S3MultipartStore(settings, on_error=metrics.count_s3_error)
        await objects.open()
        stack.push_async_callback(objects.close)
        staging: DiskStaging | S3Staging = disk
        if settings.staging_backend == "s3":
            staging = S3Staging(
                objects,
                disk,
                bucket=settings.s3_staging_bucket or settings.s3_bucket_name,
                prefix=settings.s3_staging_prefix,
            )
            await staging.open()
        store = SqlSessionStore(engine)
        notifier = await build_notifier(settings, engine, stack, start_loop=background_loops)
        uploads = UploadService(
            store,
            staging,
            objects,
            policy_from(settings),
            inspect_audio=audio_inspector(settings),
            sniff_head=head_sniffer(settings),
            notifier=notifier,
            parts=SqlPartStore(engine),
            leases=SqlLeaseStore(engine),
        )
        if uploads.eager is not None:
            stack.push_async_callback(uploads.eager.close)
    except BaseException:
        await stack.aclose()
        raise
    container = Container(
        settings=settings,
        engine=engine,
        store=store,
        staging=staging,
        objects=objects,
        uploads=uploads,
        verifier=verifier,
        stack=stack,
        outbox=SqlOutbox(engine),
        notifier=notifier,
        metrics=metrics,
        quota=(
            StagedBytesQuota(store.staged_bytes_of, settings.max_staged_bytes_per_user)
            if settings.max_staged_bytes_per_user
            else None
        ),
    )
    register_gauges(container)
    return container


def register_gauges(container: Container) -> None:
    """Gauges read from the database and the disk at scrape time. Other parts (the
    notification outbox) add theirs with `container.metrics.add_gauge_provider`."""
    metrics, engine, staging = container.metrics, container.engine, container.staging

    state_counts = SessionStateCounts(engine)

    async def sessions() -> dict[tuple[str, ...], float]:
        counts = await state_counts.counts()
        return {(state.value,): float(count) for state, count in counts.items()}

    async def staged() -> dict[tuple[str, ...], float]:
        return {(): float(await staging_bytes(staging.incoming_dir, staging.sessions_dir))}

    metrics.add_gauge_provider(
        "upload_sessions", "Upload sessions by state.", sessions, labels=("state",)
    )
    metrics.add_gauge_provider(
        "upload_staging_bytes", "Bytes of chunks held in local staging.", staged
    )
    outbox = container.outbox
    if outbox is not None:

        async def events() -> dict[tuple[str, ...], float]:
            counts = await outbox.counts_by_state()
            return {(state.value,): float(count) for state, count in counts.items()}

        # pending = outbox depth; failed = events that spent NOTIFY_MAX_ATTEMPTS.
        metrics.add_gauge_provider(
            "upload_outbox_events",
            "Main-service notification events by state (pending is the outbox depth).",
            events,
            labels=("state",),
        )
