"""Value objects of the upload domain. All datetimes are timezone-aware UTC."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utc_now() -> datetime:
    return datetime.now(UTC)


class SessionState(StrEnum):
    UPLOADING = "uploading"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the verified token says."""

    sub: str
    file_id: int | None = None


@dataclass(frozen=True)
class UploadSession:
    id: str
    owner_sub: str
    main_service_file_id: int
    original_file_name: str
    state: SessionState
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    total_size: int | None = None
    total_chunks: int | None = None
    chunk_size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    lease_expires_at: datetime | None = None
    object_key: str | None = None
    multipart_upload_id: str | None = None
    result: dict[str, Any] | None = None

    def effective_state(self, now: datetime) -> SessionState:
        """A session idle past its expiry is expired even before the janitor marks it."""
        if self.state is SessionState.UPLOADING and self.expires_at <= now:
            return SessionState.EXPIRED
        return self.state


@dataclass(frozen=True)
class StoredChunk:
    """A chunk that is durably staged and recorded. `file_name` is unique per write."""

    index: int
    size_bytes: int
    sha256: str
    file_name: str


@dataclass(frozen=True)
class StagedFile:
    """A fully written temp file, not yet part of any session."""

    file_name: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class InitRequest:
    main_service_file_id: int
    original_file_name: str
    total_size: int | None = None
    total_chunks: int | None = None
    chunk_size: int | None = None
    sha256: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class CompleteRequest:
    upload_session_id: str
    total_chunks: int
    main_service_file_id: int
    sha256: str | None = None
    # The front door the file came through, for the webhook: "chunks", "tus", "ietf".
    protocol: str = "chunks"


@dataclass(frozen=True)
class AppendChecksum:
    """A checksum the client declared for the bytes of one append (tus Upload-Checksum)."""

    algorithm: str  # a hashlib name: "sha1", "md5", "sha256"
    expected: bytes


@dataclass(frozen=True)
class CompletionOutcome:
    result: dict[str, Any]
    # True: the main service has the event; False: queued for retry; None: no main
    # service is configured (MAIN_SERVICE_NOTIFY_URL unset), so nobody was told.
    notified: bool | None = True


@dataclass(frozen=True)
class SessionView:
    session: UploadSession
    state: SessionState
    chunks: list[StoredChunk] = field(default_factory=list)

    @property
    def received_chunks(self) -> list[int]:
        if self._completed_without_chunk_rows():
            # Chunk rows go when a session completes; it had chunks 0..total_chunks-1.
            return list(range(self.session.total_chunks or 0))
        return sorted(chunk.index for chunk in self.chunks)

    @property
    def received_bytes(self) -> int:
        if self._completed_without_chunk_rows():
            assert self.session.result is not None
            return int(self.session.result.get("size", 0))
        return sum(chunk.size_bytes for chunk in self.chunks)

    def _completed_without_chunk_rows(self) -> bool:
        return (
            self.state is SessionState.COMPLETED
            and not self.chunks
            and self.session.result is not None
        )
