"""The narrow interfaces the domain needs. Adapters in `app.storage` implement them.

They are declared here, where they are used, so the domain never imports a vendor.

Leases (`LeaseStore`, issue 13): work that must happen once per session across replicas
(eager flush, complete; a tus PATCH writer later) is done by whoever holds the session's
lease of that name. A lease is short (`COMPLETION_LEASE_SECONDS`) and renewed while held
(`app.uploads.leasing.hold` does both as an async context manager); once it lapses anyone
may take it, and each taking raises its `generation`, the fencing token: every write a
holder makes that others could race is conditional on its generation, so a holder that
paused past its lease (GC, a frozen VM) can no longer write. Usage:

    held = await leasing.try_hold(leases, session_id, "work", ttl_seconds=10)
    if held is not None:
        async with held:                 # renewed every ttl/3 until the block ends
            ...                          # held.lease.generation fences the writes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, BinaryIO, Protocol, runtime_checkable

from app.uploads.models import SessionState, StagedFile, StoredChunk, UploadSession


class ChunkRecordOutcome(Enum):
    RECORDED = "recorded"
    NOT_UPLOADING = "not_uploading"
    SESSION_TOO_LARGE = "session_too_large"
    MISSING = "missing"
    LEASE_LOST = "lease_lost"  # the writer's lease (`release`) is no longer its own


@dataclass(frozen=True)
class ChunkRecordResult:
    outcome: ChunkRecordOutcome
    replaced: StoredChunk | None = None


class SessionStore(Protocol):
    """Durable session and chunk records. Every method is one atomic transaction."""

    async def create(self, session: UploadSession) -> None: ...

    async def get(self, session_id: str) -> UploadSession | None: ...

    async def list_chunks(self, session_id: str) -> list[StoredChunk]: ...

    async def record_chunk(
        self,
        session_id: str,
        chunk: StoredChunk,
        *,
        now: datetime,
        expires_at: datetime,
        max_session_bytes: int,
        release: Lease | None = None,
        admit: Callable[[UploadSession], None] | None = None,
        place: Callable[[], None] | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> ChunkRecordResult:
        """Add or replace a chunk record if the session is still uploading and stays
        within `max_session_bytes`; returns the record it replaced. With `release`, only
        while that lease is still held, and it is released in the same transaction.

        `admit` is called with the session as the transaction sees it, before anything
        is written, and refuses the chunk by raising (nothing is recorded; the error
        propagates). `place` (blocking) puts the chunk's bytes where `chunk.file_name`
        says, once nothing but the insert is left: the chunk is in place before its record
        commits. `prepare` (blocking) runs first, before the transaction takes any lock
        (it writes a small chunk's temp file: `PlacesChunks.held_write`); a failure there
        records nothing. All may run in the database's thread, never on the event loop."""
        ...

    async def create_within_limit(
        self, session: UploadSession, *, max_open: int, now: datetime
    ) -> bool:
        """Create the session unless its owner has `max_open` open (uploading or
        completing) sessions already; False when refused."""
        ...

    async def claim_completion(
        self, session_id: str, *, now: datetime, lease_expires_at: datetime
    ) -> bool:
        """uploading -> completing; True when the session is completing now (claimed
        here or before: the work lease says who does the work), False otherwise."""
        ...

    async def remember_multipart_upload(
        self,
        session_id: str,
        *,
        object_key: str,
        upload_id: str | None,
        lease: Lease | None = None,
    ) -> bool:
        """Name the session's multipart upload on its row (for the janitor to abort it);
        with `lease`, only while it is still held (False if not)."""
        ...

    async def finish_completion(
        self,
        session_id: str,
        *,
        now: datetime,
        result: dict[str, Any],
        event: OutboxEvent | None = None,
        lease: Lease | None = None,
        total_chunks: int | None = None,
    ) -> bool:
        """completing -> completed, storing the result and, when given, its outbox event,
        in one transaction: a completed session always has its event, and vice versa.
        With `lease`, only while that lease is still held (fenced by its generation).
        The session's chunk and part records go (`total_chunks` is kept instead)."""
        ...

    async def release_completion(
        self, session_id: str, *, now: datetime, lease: Lease | None = None
    ) -> None:
        """completing -> uploading after a failed attempt, so the client can retry (with
        `lease`: only while it is still held)."""
        ...

    async def set_state(
        self,
        session_id: str,
        *,
        now: datetime,
        state: SessionState,
        only_from: Sequence[SessionState],
    ) -> bool: ...

    async def staged_bytes_of(self, owner_sub: str) -> int:
        """Bytes of the chunks recorded for the owner's open (uploading, completing)
        sessions."""
        ...

    async def ping(self) -> None: ...

    async def chunk_totals(self, session_id: str) -> tuple[int, int]:
        """(number of chunks, their bytes): an append's offset without listing them."""
        ...

    async def set_total_size(self, session_id: str, total_size: int) -> bool:
        """Fix a size that was left open at creation (a deferred length); False if the
        session has a size already."""
        ...


class ChunkWriter(Protocol):
    """Streams one chunk to a temp file, hashing as it goes."""

    @property
    def size_bytes(self) -> int: ...

    async def write(self, data: bytes | memoryview) -> None: ...

    async def finish(self) -> StagedFile: ...

    async def discard(self) -> None: ...


ChunkPlacement = tuple[str, Callable[[], None]]
"""(file name, blocking move): what `adopt` would do, for a caller to run in a thread
hand-off it makes anyway (the chunk's record); the move raises like `adopt`."""


@runtime_checkable
class PlacesChunks(Protocol):
    """A staging whose `adopt` is a local rename, so it can be run in another hand-off."""

    def placement(self, session_id: str, staged: StagedFile, index: int) -> ChunkPlacement: ...

    def new_placed_writer(self, *, max_bytes: int, block_bytes: int = ...) -> ChunkWriter:
        """A writer whose chunk is only ever placed (`placement`, `adopt`) or removed
        (`remove_temp`): a small one is left for `held_write` (or the move) to write."""
        ...

    def held_write(self, staged: StagedFile) -> Callable[[], None] | None:
        """The blocking write of a chunk `new_placed_writer` left unwritten (None if it
        is on disk): run it before the placement's move, e.g. in the same hand-off. On
        failure nothing of it is left and the error is raised like the writer's."""
        ...


class ChunkStaging(Protocol):
    """Local files that hold chunks until completion."""

    def new_writer(
        self, *, max_bytes: int, block_bytes: int = ..., send_late: bool = ...
    ) -> ChunkWriter:
        """`block_bytes`: how much the writer gathers per hand-off to its disk thread (it
        holds at most two blocks); the store's default unless a caller asks for more.
        `send_late`: a full block waits for the next bytes (a body ending on a block's
        edge sends it with the close: one hand-off less), instead of going at once."""
        ...

    async def adopt(self, session_id: str, staged: StagedFile, index: int) -> str:
        """Atomically move a finished temp file into the session; returns its file name."""
        ...

    async def remove_chunk(self, session_id: str, file_name: str) -> None: ...

    async def move_chunk(
        self, from_session_id: str, file_name: str, to_session_id: str, index: int
    ) -> str:
        """Move a staged chunk into another session as `index` (a rename, or a server-side
        copy, never through this process);
        returns its new file name."""
        ...

    async def remove_temp(self, staged: StagedFile) -> None: ...

    async def remove_session(self, session_id: str) -> None: ...

    def open_assembled(self, session_id: str, chunks: Sequence[StoredChunk]) -> BinaryIO:
        """A seekable read-only view of the chunks concatenated in order (blocking I/O)."""
        ...

    async def check(self) -> None: ...


@runtime_checkable
class PartBody(Protocol):
    """A part that stays in staging while it is sent (nothing of it held in memory).

    It is never read itself: each send attempt reads it through a reader of its own
    (`open_reader`), so a retry never shares a position with an attempt that was cut off
    and whose read may still be running in a worker thread. Every reader yields the same
    bytes, those `hash_into` hashed. `close` ends every reader it opened."""

    @property
    def size_bytes(self) -> int: ...

    @property
    def payload_sha256(self) -> str | None:
        """The part's own SHA-256 (hex) when known: SigV4 signs it over plain http."""
        ...

    def hash_into(self, hasher: Hasher, *, payload_sha256: bool = False) -> None:
        """Feed the bytes, in order, to `hasher` (blocking I/O); with `payload_sha256`,
        also make the part's own SHA-256 known, from the same reads."""
        ...

    def open_reader(self) -> BinaryIO: ...

    def intact(self) -> bool:
        """Whether every file it reads is still the one it was cut from (blocking I/O):
        False once a re-sent chunk has replaced one of them."""
        ...

    def close(self) -> None: ...


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


@runtime_checkable
class RangedStream(Protocol):
    """What `open_assembled` returns where staging can send a part without reading it
    into memory first (disk staging; S3 staging reads parts into buffers)."""

    def staged_range(self, start: int, size_bytes: int) -> PartBody:
        """Bytes [start, start + size_bytes) of the stream, fewer only at its end
        (blocking I/O)."""
        ...


class MultipartObjectStore(Protocol):
    """An S3-style multipart upload. Errors are raised as StorageUnavailable."""

    async def start(self, key: str, *, content_type: str, metadata: dict[str, str]) -> str: ...

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, data: bytes | BinaryIO | PartBody
    ) -> str: ...

    async def finish(self, key: str, upload_id: str, etags: Sequence[str]) -> None: ...

    async def list_parts(self, key: str, upload_id: str) -> list[int]:
        """The part numbers the store holds for an unfinished upload."""
        ...

    @property
    def signs_payload(self) -> bool:
        """Whether a part's request is signed with its body's SHA-256 (SigV4 over plain
        http): a `PartBody` whose own SHA-256 is known then saves the store a pass."""
        ...

    async def abort(self, key: str, upload_id: str) -> None: ...

    def url_for(self, key: str) -> str: ...

    @property
    def bucket(self) -> str: ...

    async def check(self) -> None: ...


# --- leases across replicas -----------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    session_id: str
    name: str
    holder: str
    generation: int
    expires_at: datetime


class LeaseStore(Protocol):
    """Per-session named leases with a fencing generation, kept in the shared database."""

    async def acquire(
        self, session_id: str, name: str, *, holder: str, now: datetime, ttl_seconds: float
    ) -> Lease | None:
        """Take the lease if nobody holds it or its holder let it lapse (the generation
        goes up by one); None while another holder's lease runs."""
        ...

    async def renew(self, lease: Lease, *, now: datetime, ttl_seconds: float) -> Lease | None:
        """Extend a lease still ours (same generation); None once taken over."""
        ...

    async def release(self, lease: Lease, *, now: datetime) -> None:
        """Let it lapse now if still ours; the generation stays, so it keeps growing."""
        ...

    async def current(self, session_id: str, name: str) -> Lease | None: ...


# --- main-service notification ---------------------------------------------------------


@dataclass(frozen=True)
class OutboxEvent:
    """An event for the main service, written in the transaction that completes a session.
    `payload` is the JSON body, identical on every delivery attempt."""

    event_id: str
    event_type: str
    upload_session_id: str
    occurred_at: datetime
    payload: dict[str, Any]


class CompletionNotifier(Protocol):
    """Delivers outbox events to the main service. Never raises for delivery failures:
    an event that cannot be sent now stays due and the background loop retries it."""

    async def attempt_now(self, event_id: str) -> bool:
        """One immediate attempt if the event is due and no one else holds it;
        True once the event is delivered (now or earlier)."""
        ...

    async def session_event(self, session_id: str) -> str | None:
        """The id of the session's completion event, if one was written."""
        ...


# --- one writer per upload (the resumable front doors) ----------------------------------


class LeaseState(Enum):
    HELD = "held"
    RELEASE_REQUESTED = "release_requested"  # another request is waiting: finish up
    LOST = "lost"  # expired and taken (or released): write nothing more


class UploadLocks(Protocol):
    """At most one request appends to an upload at a time, across processes and replicas:
    the session's `append` lease in the same `LeaseStore` rows as eager flush and
    completion use, plus a flag by which a waiting request asks the holder to let go.

    A lease lapses `ttl_seconds` after its last renewal, so a dead holder (a killed
    process) blocks others for seconds; a live holder renews it while its request runs
    and gives it up when another request asks for it (its client is presumably gone)."""

    async def acquire(self, session_id: str, *, ttl_seconds: float) -> Lease | None:
        """The lease if it is free or lapsed; None while another holder has it."""
        ...

    async def renew(self, lease: Lease, *, ttl_seconds: float) -> LeaseState: ...

    async def request_release(self, session_id: str) -> None:
        """Ask the current holder to finish early (it sees RELEASE_REQUESTED on renew)."""
        ...

    async def release(self, lease: Lease) -> None: ...


@dataclass(frozen=True)
class ResumableRecord:
    """What a resumable front door keeps beside the session: which protocol created it
    ("tus", "ietf"), the tus `Upload-Metadata` header as sent (echoed on HEAD), and for
    tus concatenation whether the upload is a "partial" or the "final" one, and a final
    upload's partial upload ids in order."""

    session_id: str
    protocol: str
    metadata: str | None = None
    concat: str | None = None
    parts: tuple[str, ...] = ()


class ResumableRecords(Protocol):
    async def create(self, record: ResumableRecord) -> None: ...

    async def get(self, session_id: str) -> ResumableRecord | None: ...
