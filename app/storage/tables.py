"""The database schema as SQLAlchemy Core tables. Alembic migrations create it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC; always hands back timezone-aware datetimes (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


upload_sessions = Table(
    "upload_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner_sub", String(255), nullable=False, index=True),
    Column("main_service_file_id", BigInteger, nullable=False),
    Column("original_file_name", String(1024), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
    Column("total_size", BigInteger),
    Column("total_chunks", Integer),
    Column("chunk_size", BigInteger),
    Column("sha256", String(64)),
    Column("content_type", String(255)),
    Column("lease_expires_at", UtcDateTime),
    Column("object_key", String(1024)),
    Column("multipart_upload_id", String(1024)),
    Column("result", JSON),
    # Eager flush: {"upload_id", "content_type"} of the multipart upload it created, so
    # `complete` (in any process) knows the Content-Type S3 will give the object.
    Column("eager_upload", JSON),
    # The bytes of the session's chunk records, kept by each record's transaction (the
    # size check reads it instead of summing the chunk rows; migration 0009). Kept true
    # for sessions that can still record chunks; closed sessions' value is not read.
    Column("chunk_bytes", BigInteger, nullable=False, server_default="0"),
)
# The retention purge and the per-state gauges walk (state, updated_at) (migration 0005).
Index("ix_upload_sessions_state_updated_at", upload_sessions.c.state, upload_sessions.c.updated_at)

upload_chunks = Table(
    "upload_chunks",
    metadata,
    Column(
        "session_id",
        String(36),
        ForeignKey("upload_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("chunk_index", Integer, primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
)

# --- eager flush (issue 7): multipart parts already sent to S3 while chunks arrive ----
# `covers` lists, for each chunk whose bytes the part holds, [index, sha256, size_bytes,
# start offset of the chunk in the file]: equal covers mean equal bytes.
upload_parts = Table(
    "upload_parts",
    metadata,
    Column(
        "session_id",
        String(36),
        ForeignKey("upload_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("part_number", Integer, primary_key=True),
    Column("upload_id", String(1024), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("etag", String(255), nullable=False),
    Column("covers", JSON, nullable=False),
    Column("uploaded_at", UtcDateTime, nullable=False),
    # The whole file's SHA-256 state after this part (app.uploads.sha256_state, hex), and
    # the layout it was computed on: a digest of the covers of parts 1..n. The state is
    # used only while the current layout of parts 1..n has that digest (migration 0007).
    Column("sha256_state", String(80)),
    Column("layout_sha256", String(64)),
)

# --- replicas (issue 13): per-session leases with a fencing token ----------------------
# One row per (session, name). `generation` only ever grows (a release lapses the row
# instead of deleting it), so a holder whose lease was taken over can never pass for the
# new one; rows go when their session completes or is purged.
session_leases = Table(
    "session_leases",
    metadata,
    Column("session_id", String(36), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    # Set by a request that waits for the lease (the tus/IETF `append` lease): the holder
    # sees it when it renews and finishes early; cleared when the lease changes hands.
    Column("release_requested", Boolean, nullable=False, server_default=false()),
)

# --- the resumable front doors (issue 14): tus 1.0 and IETF resumable uploads ----------
# What the protocol needs beyond the session: the tus `Upload-Metadata` header as sent
# (echoed on HEAD), whether the upload is a tus partial or final concatenation, a final
# upload's partial uploads (HEAD answers them in `Upload-Concat`), and the protocol that
# created it (the webhook's `protocol`).
resumable_uploads = Table(
    "resumable_uploads",
    metadata,
    Column(
        "session_id",
        String(36),
        ForeignKey("upload_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("protocol", String(16), nullable=False),
    Column("metadata", String(4096)),
    Column("concat", String(16)),  # "partial" | "final" | NULL
    # A final upload's partial upload ids, in order, space-separated; NULL otherwise.
    Column("concat_parts", Text),
)
