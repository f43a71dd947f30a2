"""UploadService: the rules of an upload session, independent of any wire protocol.

Invariants:
* a session is only ever seen by the `sub` that created it (others get "not found");
* a chunk becomes part of a session only once fully written, verified and renamed, and
  its record commits only while the session is still uploading, so a completion never
  reads a chunk that changes under it;
* a session's once-only work (eager flush, complete) is done by whoever holds its work
  lease (`ports.LeaseStore`, a row in the shared database with a fencing generation),
  so any replica may answer any call. The lease is short (COMPLETION_LEASE_SECONDS) and
  renewed while held: a holder killed mid-complete is replaced within that time;
* `complete` marks the session `completing` (no more chunks), then takes the work lease.
  A second `complete` (on any replica) waits for the holder: it answers the holder's
  result once the session is completed, takes the work over once the lease lapses (the
  holder died), or answers 409 `completion_in_progress` after about 1.5 leases;
* a failed completion leaves the session completable and nothing in the bucket;
* with a notifier, a session becomes completed in the same transaction that writes its
  `upload.completed` outbox event, so the main service hears of every stored file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Protocol

import structlog

from app.errors import (
    ChecksumMismatch,
    ChunksIncomplete,
    ChunkTooLarge,
    CompletionInProgress,
    FileIdMismatch,
    FileTooLarge,
    Forbidden,
    LeaseLost,
    OffsetMismatch,
    SessionExpired,
    SessionNotAcceptingChunks,
    SessionNotCompletable,
    SessionNotFound,
    SizeMismatch,
    TooManyOpenSessions,
    UnsupportedAudio,
    UploadChecksumMismatch,
    UploadLengthExceeded,
    UploadLocked,
    ValidationFailed,
)
from app.logging import PerRequestLogger
from app.uploads import audio, leasing
from app.uploads.assembly import hash_stream, upload_in_parts
from app.uploads.audio import AudioFacts
from app.uploads.eager import EagerFlusher, ObjectTarget, PartStore
from app.uploads.models import (
    AppendChecksum,
    CompleteRequest,
    CompletionOutcome,
    InitRequest,
    Principal,
    SessionState,
    SessionView,
    StagedFile,
    StoredChunk,
    UploadSession,
    utc_now,
)
from app.uploads.naming import (
    build_object_key,
    check_file_name,
    file_extension,
    legacy_object_key,
)
from app.uploads.ports import (
    ChunkRecordOutcome,
    ChunkStaging,
    ChunkWriter,
    CompletionNotifier,
    Lease,
    LeaseStore,
    MultipartObjectStore,
    OutboxEvent,
    PlacesChunks,
    SessionStore,
)

log = structlog.get_logger(__name__)
# The event every chunk logs (app.logging.PerRequestLogger).
chunk_log = PerRequestLogger(__name__)

# How often a `complete` waiting for another holder's lease looks again.
LEASE_POLL_SECONDS = 0.25
# A tus/IETF append hands its staging writer's thread 1 MiB at a time rather than the
# store's default (256 KiB, kept for chunks: many at once, each under two blocks): a
# quarter of the hand-offs per piece; one append holds at most two blocks (2 MiB).
APPEND_WRITE_BLOCK_BYTES = 1024 * 1024

# Content types by extension, used until the bytes themselves are inspected.
_EXTENSION_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
    "aiff": "audio/aiff",
    "aif": "audio/aiff",
    "amr": "audio/amr",
}

AudioInspector = Callable[[BinaryIO, str], AudioFacts]
"""Reads the head (and tail) of the assembled file and says what audio it is, or raises
audio.UnsupportedAudio. Blocking: it runs in a worker thread."""

HeadSniffer = Callable[[BinaryIO, str], str | None]
"""Reads the head of a file whose start the stream holds (its first staged chunks) and
says which Content-Type the AudioInspector will give it, None if the head is too short to
tell, or raises audio.UnsupportedAudio when the head alone shows it will refuse the file.
Blocking: it runs in a worker thread."""


class WriterLease(Protocol):
    """The lease of the one request appending to an upload (`append`)."""

    def lease_to_release(self) -> Lease | None:
        """The lease, if still held, for the last record to release."""
        ...

    def released_with_record(self, lease: Lease) -> None:
        """That record committed: the lease is released."""
        ...


@dataclass(frozen=True)
class UploadPolicy:
    max_chunk_size: int
    max_file_size: int
    max_chunks: int
    session_ttl_seconds: int
    completion_lease_seconds: int
    allowed_extensions: frozenset[str]
    key_prefix: str
    part_size_bytes: int
    part_concurrency: int
    max_open_sessions_per_user: int = 0  # 0: no limit
    eager_flush: bool = True


class UploadService:
    def __init__(
        self,
        store: SessionStore,
        staging: ChunkStaging,
        objects: MultipartObjectStore,
        policy: UploadPolicy,
        *,
        inspect_audio: AudioInspector | None = None,
        sniff_head: HeadSniffer | None = None,
        clock: Callable[[], datetime] = utc_now,
        notifier: CompletionNotifier | None = None,
        parts: PartStore | None = None,
        leases: LeaseStore | None = None,
    ) -> None:
        self.store = store
        self.staging = staging
        self.objects = objects
        self.policy = policy
        self._inspect_audio = inspect_audio
        self._sniff_head = sniff_head
        self._clock = clock
        self._notifier = notifier
        # Without a shared store (tests, one process) the leases live in this process.
        self.leases: LeaseStore = leases if leases is not None else leasing.MemoryLeaseStore()
        # Writes are fenced in the store only when the leases live in the same database.
        self._fenced = leases is not None
        # A local staging's rename runs in the chunk record's own hand-off.
        self._places: PlacesChunks | None = staging if isinstance(staging, PlacesChunks) else None
        # Eager flush (issue 7): parts go to S3 while chunks arrive; off without a PartStore.
        self.eager: EagerFlusher | None = None
        if parts is not None and policy.eager_flush:
            self.eager = EagerFlusher(
                store,
                parts,
                staging,
                objects,
                target=self._object_target,
                head_target=self._eager_target,
                part_size_bytes=policy.part_size_bytes,
                concurrency=policy.part_concurrency,
                clock=clock,
                leases=self.leases,
                lease_seconds=policy.completion_lease_seconds,
            )

    # ----------------------------------------------------------------------- init
    async def init(self, principal: Principal, request: InitRequest) -> UploadSession:
        self._check_file_id_claim(principal, request.main_service_file_id)
        self._check_file_name(request.original_file_name)
        policy = self.policy
        if request.total_size is not None and request.total_size > policy.max_file_size:
            raise FileTooLarge(details={"max_file_size": policy.max_file_size})
        if request.total_chunks is not None and request.total_chunks > policy.max_chunks:
            raise ValidationFailed(
                f"total_chunks must be at most {policy.max_chunks}.",
                details={"max_chunks": policy.max_chunks},
            )
        if request.chunk_size is not None and request.chunk_size > policy.max_chunk_size:
            raise ChunkTooLarge(
                "chunk_size exceeds the maximum chunk size.",
                details={"max_chunk_size": policy.max_chunk_size},
            )
        now = self._clock()
        session_id = str(uuid.uuid4())
        session = UploadSession(
            id=session_id,
            owner_sub=principal.sub,
            main_service_file_id=request.main_service_file_id,
            original_file_name=request.original_file_name,
            state=SessionState.UPLOADING,
            created_at=now,
            updated_at=now,
            expires_at=self._expiry_from(now),
            total_size=request.total_size,
            total_chunks=request.total_chunks,
            chunk_size=request.chunk_size,
            sha256=request.sha256.lower() if request.sha256 else None,
            content_type=request.content_type,
            # Stored at init: the key rule may change, a session's key never does.
            object_key=build_object_key(
                policy.key_prefix,
                principal.sub,
                request.main_service_file_id,
                session_id,
                request.original_file_name,
            ),
        )
        limit = policy.max_open_sessions_per_user
        if not limit:
            await self.store.create(session)
        elif not await self.store.create_within_limit(session, max_open=limit, now=now):
            raise TooManyOpenSessions(details={"max_open_sessions": limit})
        log.info(
            "upload.session_created",
            session_id=session.id,
            sub=principal.sub,
            main_service_file_id=session.main_service_file_id,
        )
        return session

    # ---------------------------------------------------------------------- chunk
    def new_chunk_writer(self) -> ChunkWriter:
        # A chunk's file only goes to `accept_chunk` (which places it in the record's
        # hand-off) or `remove_temp`: a small one is written there, one hand-off less.
        if self._places is not None:
            return self._places.new_placed_writer(max_bytes=self.policy.max_chunk_size)
        return self.staging.new_writer(max_bytes=self.policy.max_chunk_size)

    def new_append_writer(self) -> ChunkWriter:
        """A staging writer for one piece of a byte-stream append (tus, IETF)."""
        return self.staging.new_writer(
            max_bytes=self._append_piece_bytes,
            block_bytes=APPEND_WRITE_BLOCK_BYTES,
            send_late=True,
        )

    @property
    def _append_piece_bytes(self) -> int:
        return min(self.policy.part_size_bytes, self.policy.max_chunk_size)

    async def check_can_receive(self, principal: Principal, session_id: str) -> UploadSession:
        """Fails fast, before any chunk byte is read, when the chunk would be refused."""
        session = await self.store.get(session_id)
        if session is None:
            raise SessionNotFound()
        self._check_receiving(principal, session)
        return session

    def _check_receiving(self, principal: Principal, session: UploadSession) -> None:
        """`check_can_receive` on a session already read (blocking-safe: may run in the
        database's thread, inside the chunk's record transaction)."""
        self._check_owner(principal, session)
        state = session.effective_state(self._clock())
        if state is SessionState.EXPIRED:
            raise SessionExpired()
        if state is not SessionState.UPLOADING:
            raise SessionNotAcceptingChunks(details={"state": state.value})

    def _check_chunk(
        self, session: UploadSession, index: int, staged: StagedFile, chunk_sha256: str | None
    ) -> None:
        self._check_index(session, index)
        if chunk_sha256 is not None and chunk_sha256.lower() != staged.sha256:
            raise ChecksumMismatch(
                "The chunk's SHA-256 does not match chunk_sha256; the chunk was discarded.",
                details={"expected": chunk_sha256.lower(), "actual": staged.sha256},
            )

    async def accept_chunk(
        self,
        principal: Principal,
        session_id: str,
        index: int,
        staged: StagedFile,
        chunk_sha256: str | None = None,
        *,
        checked: UploadSession | None = None,
        flush_eagerly: bool = True,
        release: Lease | None = None,
    ) -> StoredChunk:
        """Make a fully written temp file chunk `index` of the session, replacing any
        earlier one. On any refusal the temp file is removed. `checked`: the session as
        `check_can_receive` returned it before the bytes were read, which saves reading
        it again (its state is re-checked atomically when the chunk is recorded); without
        it, and with a staging that renames locally, the session is checked inside the
        chunk's record transaction instead (the same checks, the same errors, one
        database hand-off less). `release`: the writer's lease, released with the record,
        which commits only while the lease is still held (UploadLocked otherwise)."""
        admit: Callable[[UploadSession], None] | None = None
        place: Callable[[], None] | None = None
        prepare: Callable[[], None] | None = None
        placed = False
        try:
            if checked is not None and checked.id == session_id:
                self._check_chunk(checked, index, staged, chunk_sha256)
            elif self._places is None:
                session = await self.check_can_receive(principal, session_id)
                self._check_chunk(session, index, staged, chunk_sha256)
            else:

                def admit(session: UploadSession) -> None:
                    self._check_receiving(principal, session)
                    self._check_chunk(session, index, staged, chunk_sha256)

            if self._places is None:
                file_name = await self.staging.adopt(session_id, staged, index)
                placed = True
            else:
                file_name, move = self._places.placement(session_id, staged, index)
                # A small chunk left unwritten by its writer is written in the record's
                # hand-off, before its transaction begins.
                prepare = self._places.held_write(staged)

                def place() -> None:
                    nonlocal placed
                    move()
                    placed = True

        except BaseException:
            await self.staging.remove_temp(staged)
            raise
        chunk = StoredChunk(
            index=index, size_bytes=staged.size_bytes, sha256=staged.sha256, file_name=file_name
        )
        now = self._clock()
        try:
            recorded = await self.store.record_chunk(
                session_id,
                chunk,
                now=now,
                expires_at=self._expiry_from(now),
                max_session_bytes=self.policy.max_file_size,
                release=release,
                admit=admit,
                place=place,
                prepare=prepare,
            )
        except BaseException:
            if placed:
                await self.staging.remove_chunk(session_id, file_name)
            else:
                await self.staging.remove_temp(staged)
            raise
        if recorded.outcome is not ChunkRecordOutcome.RECORDED:
            if placed:
                await self.staging.remove_chunk(session_id, file_name)
            else:
                await self.staging.remove_temp(staged)
            if recorded.outcome is ChunkRecordOutcome.LEASE_LOST:
                raise UploadLocked("This request lost the upload to another request.")
            if recorded.outcome is ChunkRecordOutcome.SESSION_TOO_LARGE:
                raise FileTooLarge(details={"max_file_size": self.policy.max_file_size})
            if recorded.outcome is ChunkRecordOutcome.MISSING:
                raise SessionNotFound()
            await self.check_can_receive(principal, session_id)  # the precise refusal
            raise SessionNotAcceptingChunks()
        if recorded.replaced is not None and recorded.replaced.file_name != file_name:
            await self.staging.remove_chunk(session_id, recorded.replaced.file_name)
        chunk_log.info(
            "upload.chunk_stored",
            session_id=session_id,
            index=index,
            size_bytes=chunk.size_bytes,
            replaced=recorded.replaced is not None,
        )
        if self.eager is not None and flush_eagerly:
            self.eager.poke(session_id, index=index, size_bytes=chunk.size_bytes)
        return chunk

    # ------------------------------------------------- byte-stream appends (tus, IETF)
    def receiving_check(self, principal: Principal) -> Callable[[UploadSession], None]:
        """`check_can_receive`'s checks, for a session an appending request reads with
        its writer lease (blocking-safe: runs in the database's thread)."""

        def check(session: UploadSession) -> None:
            self._check_receiving(principal, session)

        return check

    async def append(
        self,
        principal: Principal,
        session_id: str,
        *,
        offset: int,
        body: AsyncIterable[bytes],
        checksum: AppendChecksum | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
        flush_eagerly: bool = True,
        new_writer: Callable[[], ChunkWriter] | None = None,
        checked: UploadSession | None = None,
        writer_lease: WriterLease | None = None,
        totals: tuple[int, int] | None = None,
    ) -> int:
        """Append a byte stream at `offset` (which must be the bytes held now); returns
        the new offset.

        The stream is staged in pieces of `part_size_bytes`, each recorded as the next
        chunk as soon as it is whole, so memory stays bounded and a long body that is cut
        off keeps what arrived: when `body` simply ends early (the front door ends it on a
        disconnect), the last partial piece is recorded too. With a `checksum`, nothing is
        recorded until the whole body has matched it; on a mismatch every piece is
        dropped and the offset is unchanged. `fence` runs before each record and raises if
        this writer may no longer write (its upload lease was lost). The caller ensures a
        single writer per upload. `new_writer` makes each piece's writer (the front door
        wraps `new_append_writer` to count the bytes against the caller's quota).
        `checked`: the session as `check_can_receive` returned it for this request,
        before the writer lease was taken: used only once its length is fixed (nothing
        else of it can change under the lease that the record does not re-check).
        `writer_lease`: the caller's writer lease, released in the transaction of the
        request's last record (one transaction less per request). `totals`: the upload's
        chunk count and bytes, read under the writer lease in the same transaction as
        `checked` (so `checked` is used whatever its length)."""
        if checked is not None and checked.id == session_id and totals is not None:
            session = checked
            index, held = totals
        else:
            if checked is not None and checked.id == session_id and checked.total_size is not None:
                session = checked
            else:
                session = await self.check_can_receive(principal, session_id)
            index, held = await self.store.chunk_totals(session_id)
        if offset != held:
            raise OffsetMismatch(details={"offset": held})
        limit = session.total_size if session.total_size is not None else self.policy.max_file_size
        room = limit - held
        piece_bytes = self._append_piece_bytes
        make_writer = new_writer or self.new_append_writer
        digest = hashlib.new(checksum.algorithm) if checksum is not None else None
        held_back: list[StagedFile] = []
        # A whole piece waits here until the body either goes on (then it is recorded)
        # or ends (then it is the last record, which releases the writer lease in its own
        # transaction): a body that ends on a piece boundary (an 8 MiB PATCH, a whole file
        # of whole parts) needs no transaction of its own to let the lease go.
        full: StagedFile | None = None
        writer: ChunkWriter | None = None
        appended = 0

        async def record(staged: StagedFile, *, last: bool = False) -> None:
            nonlocal index
            if fence is not None:
                try:
                    await fence()
                except BaseException:
                    await self.staging.remove_temp(staged)
                    raise
            lease = writer_lease.lease_to_release() if last and writer_lease else None
            await self.accept_chunk(
                principal,
                session_id,
                index,
                staged,
                checked=session,
                flush_eagerly=flush_eagerly,
                release=lease,
            )
            if lease is not None and writer_lease is not None:
                writer_lease.released_with_record(lease)
            index += 1

        try:
            async for data in body:
                view = memoryview(data)
                while view:
                    if full is not None:
                        staged, full = full, None
                        await record(staged)
                    if writer is None:
                        writer = make_writer()
                    piece = view[: piece_bytes - writer.size_bytes]
                    view = view[len(piece) :]
                    if appended + len(piece) > room:
                        if session.total_size is None:
                            raise FileTooLarge(details={"max_file_size": self.policy.max_file_size})
                        raise UploadLengthExceeded(details={"length": session.total_size})
                    if digest is not None:
                        digest.update(piece)
                    await writer.write(piece)
                    appended += len(piece)
                    if writer.size_bytes >= piece_bytes:
                        staged, writer = await writer.finish(), None
                        if digest is not None:
                            held_back.append(staged)
                        else:
                            full = staged
            if full is not None:
                staged, full = full, None
                await record(staged, last=True)
            if writer is not None:
                staged, writer = await writer.finish(), None
                if staged.size_bytes and digest is not None:
                    held_back.append(staged)
                elif staged.size_bytes:
                    await record(staged, last=True)
                else:
                    await self.staging.remove_temp(staged)
            if digest is not None and checksum is not None:
                if digest.digest() != checksum.expected:
                    raise UploadChecksumMismatch(details={"offset": held})
                while held_back:
                    await record(held_back.pop(0), last=len(held_back) == 1)
        except BaseException:
            if writer is not None:
                await writer.discard()
            if full is not None:
                # It arrived whole before the body failed (only the wait for the next bytes
                # can fail while one waits): kept, as it was before the wait. Its own
                # refusal cleans up after itself and must not hide the first error.
                staged, full = full, None
                with contextlib.suppress(Exception):
                    await record(staged, last=True)
            for staged in held_back:
                await self.staging.remove_temp(staged)
            raise
        return held + appended

    async def declare_size(
        self, principal: Principal, session_id: str, total_size: int
    ) -> UploadSession:
        """Fix the size of an upload created without one (tus creation-defer-length)."""
        session = await self.check_can_receive(principal, session_id)
        if total_size > self.policy.max_file_size:
            raise FileTooLarge(details={"max_file_size": self.policy.max_file_size})
        if session.total_size is not None:
            if session.total_size != total_size:
                raise ValidationFailed(
                    "The upload's length is already set.", details={"length": session.total_size}
                )
            return session
        held = sum(chunk.size_bytes for chunk in await self.store.list_chunks(session_id))
        if total_size < held:
            raise ValidationFailed(
                "The length is less than the bytes already received.", details={"offset": held}
            )
        if not await self.store.set_total_size(session_id, total_size):
            current = await self.store.get(session_id)
            if current is None or current.total_size != total_size:
                raise ValidationFailed("The upload's length is already set.")
        return replace(session, total_size=total_size)

    async def concatenate(
        self, principal: Principal, target_id: str, source_ids: Sequence[str]
    ) -> int:
        """Move the staged bytes of finished uploads (tus partial uploads), in order, into
        `target_id` as its chunks, without copying them; returns the bytes moved. Each
        source is closed (state aborted) before its chunks move, so nothing can be
        appended to it meanwhile; its records stay until the janitor purges them."""
        target = await self.check_can_receive(principal, target_id)
        index = len(await self.store.list_chunks(target_id))
        sources: list[tuple[UploadSession, list[StoredChunk]]] = []
        for source_id in source_ids:
            source = await self.check_can_receive(principal, source_id)
            chunks = sorted(await self.store.list_chunks(source_id), key=lambda c: c.index)
            size = sum(chunk.size_bytes for chunk in chunks)
            if source.total_size is None or size != source.total_size:
                raise ValidationFailed(
                    "A partial upload is not finished.", details={"upload": source_id}
                )
            sources.append((source, chunks))
        total = sum(sum(c.size_bytes for c in chunks) for _, chunks in sources)
        if total > self.policy.max_file_size:
            raise FileTooLarge(details={"max_file_size": self.policy.max_file_size})
        if target.total_size is None:
            await self.store.set_total_size(target_id, total)
        for source, chunks in sources:
            closed = await self.store.set_state(
                source.id,
                now=self._clock(),
                state=SessionState.ABORTED,
                only_from=[SessionState.UPLOADING],
            )
            if not closed:
                raise SessionNotAcceptingChunks(details={"upload": source.id})
            for chunk in chunks:
                name = await self.staging.move_chunk(source.id, chunk.file_name, target_id, index)
                now = self._clock()
                recorded = await self.store.record_chunk(
                    target_id,
                    replace(chunk, index=index, file_name=name),
                    now=now,
                    expires_at=self._expiry_from(now),
                    max_session_bytes=self.policy.max_file_size,
                )
                if recorded.outcome is not ChunkRecordOutcome.RECORDED:
                    await self.staging.remove_chunk(target_id, name)
                    raise SessionNotAcceptingChunks(details={"upload": target_id})
                index += 1
            await self.staging.remove_session(source.id)
        log.info("upload.concatenated", session_id=target_id, sources=len(sources), size=total)
        return total

    # ------------------------------------------------------------------- complete
    async def complete(self, principal: Principal, request: CompleteRequest) -> CompletionOutcome:
        session = await self._owned(principal, request.upload_session_id)
        self._check_file_id_claim(principal, request.main_service_file_id)
        if request.main_service_file_id != session.main_service_file_id:
            raise FileIdMismatch(details={"expected": session.main_service_file_id})
        now = self._clock()
        finished = self._finished_outcome(session, now)
        if finished is not None:
            return await self._with_notification_state(session.id, finished)
        if request.total_chunks > self.policy.max_chunks:
            raise ValidationFailed(f"total_chunks must be at most {self.policy.max_chunks}.")
        if session.total_chunks is not None and request.total_chunks != session.total_chunks:
            raise ValidationFailed(
                "total_chunks differs from the one declared at init.",
                details={"declared": session.total_chunks},
            )
        declared_sha = request.sha256.lower() if request.sha256 else None
        if declared_sha and session.sha256 and declared_sha != session.sha256:
            raise ChecksumMismatch("sha256 differs from the one declared at init.")
        chunks = await self.store.list_chunks(session.id)
        self._check_chunk_set(chunks, request.total_chunks)
        total_bytes = sum(chunk.size_bytes for chunk in chunks)
        if session.total_size is not None and total_bytes != session.total_size:
            raise SizeMismatch(details={"declared": session.total_size, "received": total_bytes})
        if total_bytes == 0:
            raise ValidationFailed("The file is empty.")

        claimed = await self.store.claim_completion(
            session.id,
            now=now,
            lease_expires_at=now + timedelta(seconds=self.policy.completion_lease_seconds),
        )
        if not claimed:
            return await self._outcome_of_another_completion(session.id)
        held = await self._hold_work_lease(session.id)
        if held is None:
            return await self._outcome_of_another_completion(session.id)
        async with held:
            return await self._complete_holding(session, request, declared_sha, held)

    async def _hold_work_lease(self, session_id: str) -> leasing.HeldLease | None:
        """The session's work lease, waiting (with a deadline) for a live holder to finish
        or a dead one's lease to lapse; None once the session is no longer completing or
        the wait is over."""
        if self.eager is not None:
            # Stop this process's background flush first: it holds the lease while it runs.
            waited = time.perf_counter()
            await self.eager.take_over(session_id)
            log.info(
                "upload.eager_taken_over",
                session_id=session_id,
                waited_seconds=round(time.perf_counter() - waited, 3),
            )
        ttl_seconds = self.policy.completion_lease_seconds
        deadline = time.monotonic() + 1.5 * ttl_seconds + 1
        while True:
            held = await leasing.try_hold(
                self.leases, session_id, ttl_seconds=ttl_seconds, clock=self._clock
            )
            if held is not None:
                if held.generation > 1:
                    log.info(
                        "upload.lease_taken", session_id=session_id, generation=held.generation
                    )
                return held
            current = await self.store.get(session_id)
            if (
                current is None
                or current.state is not SessionState.COMPLETING
                or time.monotonic() >= deadline
            ):
                if self.eager is not None:
                    self.eager.release(session_id)
                return None
            await asyncio.sleep(LEASE_POLL_SECONDS)

    async def _complete_holding(
        self,
        session: UploadSession,
        request: CompleteRequest,
        declared_sha: str | None,
        held: leasing.HeldLease,
    ) -> CompletionOutcome:
        # Re-read under the lease: another holder may have finished (or released) it, and
        # the row names the multipart upload a flush (on any replica) opened.
        current = await self.store.get(session.id)
        if current is None or current.state is not SessionState.COMPLETING:
            if self.eager is not None:
                self.eager.release(session.id)
            return await self._outcome_of_another_completion(session.id)
        session = current
        try:
            # Chunks cannot change any more: re-read the records we now own.
            chunks = sorted(await self.store.list_chunks(session.id), key=lambda c: c.index)
            self._check_chunk_set(chunks, request.total_chunks)
            result = await self._assemble(session, chunks, declared_sha or session.sha256, held)
        except BaseException as error:
            holds = False if isinstance(error, LeaseLost) else await self._still_holds(held)
            if holds is not True:
                # Taken over (the janitor released us, or a retry claimed the lapsed
                # lease), before the commit or while failing (e.g. the janitor aborted the
                # upload a stalled holder was still sending to): the eager upload, its
                # part rows and the session's state are the new holder's, and its outcome,
                # if any, is the answer. Or the database cannot say: the first error is
                # the answer, and the lease lapses for a retry (or the janitor) to clean up.
                if self.eager is not None:
                    self.eager.release(session.id)
                if holds is False and isinstance(error, Exception):
                    return await self._outcome_of_another_completion(session.id)
                raise
            if self.eager is not None:
                await asyncio.shield(self._discard_eager(session))
                self.eager.release(session.id)
            await asyncio.shield(
                self.store.release_completion(
                    session.id, now=self._clock(), lease=held.lease if self._fenced else None
                )
            )
            raise
        if self.eager is not None:
            self.eager.forget(session.id)
        finished_at = self._clock()
        event = (
            self._completed_event(session, result, finished_at, request.protocol)
            if self._notifier is not None
            else None
        )
        committed = await self.store.finish_completion(
            session.id,
            now=finished_at,
            result=result,
            event=event,
            lease=held.lease if self._fenced else None,
            total_chunks=request.total_chunks,
        )
        if not committed:
            # Our lease lapsed and the session was taken from us (released by the janitor
            # or claimed by a retry). Its chunks are not ours to delete; the stored result,
            # if any, is the answer.
            return await self._outcome_of_another_completion(session.id)
        await self.staging.remove_session(session.id)
        notified: bool | None = None
        if event is not None and self._notifier is not None:
            notified = await self._notifier.attempt_now(event.event_id)
        log.info(
            "upload.completed",
            session_id=session.id,
            key=result["key"],
            size_bytes=result["size"],
            notified=notified,
            lease_generation=held.generation,
        )
        return CompletionOutcome(result=result, notified=notified)

    @staticmethod
    def _completed_event(
        session: UploadSession, result: dict[str, Any], now: datetime, protocol: str = "chunks"
    ) -> OutboxEvent:
        """The `upload.completed` event: the contract's fields, then any audio facts
        (duration_seconds, codec, ...) the completion found."""
        event_id = str(uuid.uuid4())
        payload: dict[str, Any] = {
            "event_id": event_id,
            "event": "upload.completed",
            "occurred_at": now.isoformat(),
            "upload_session_id": session.id,
            "main_service_file_id": session.main_service_file_id,
            "user_id": session.owner_sub,
            "original_file_name": session.original_file_name,
            "bucket": result["bucket"],
            "key": result["key"],
            "url": result["file_path_on_upload_service"],
            "size": result["size"],
            "sha256": result["sha256"],
            "content_type": result["content_type"],
            "protocol": protocol,
        }
        for name, value in result.items():
            if name != "file_path_on_upload_service" and name not in payload:
                payload[name] = value
        return OutboxEvent(
            event_id=event_id,
            event_type="upload.completed",
            upload_session_id=session.id,
            occurred_at=now,
            payload=payload,
        )

    async def _with_notification_state(
        self, session_id: str, outcome: CompletionOutcome
    ) -> CompletionOutcome:
        """A repeated complete: the stored result, and whether the main service has it.
        An event still pending gets one more attempt if it is due; a delivered one is
        never sent again."""
        if self._notifier is None:
            return replace(outcome, notified=None)
        event_id = await self._notifier.session_event(session_id)
        if event_id is None:  # completed while notifications were switched off
            return replace(outcome, notified=None)
        notified = await self._notifier.attempt_now(event_id)
        return replace(outcome, notified=notified)

    async def _outcome_of_another_completion(self, session_id: str) -> CompletionOutcome:
        """Another request holds (or held) the completion: its stored result if it has
        finished, else 409 so the client retries."""
        current = await self.store.get(session_id)
        if current is not None:
            outcome = self._finished_outcome(current, self._clock())
            if outcome is not None:
                return await self._with_notification_state(session_id, outcome)
        raise CompletionInProgress()

    async def _still_holds(self, held: leasing.HeldLease) -> bool | None:
        """Whether the work lease is still ours (renewed by asking): only its holder cleans
        up what the session's holders share. None: the database cannot say."""
        try:
            await asyncio.shield(held.confirm())
        except LeaseLost:
            return False
        except Exception:  # noqa: BLE001 - no answer: treated as not ours to clean
            log.warning("upload.lease_check_failed", session_id=held.lease.session_id)
            return None
        return True

    async def _assemble(
        self,
        session: UploadSession,
        chunks: Sequence[StoredChunk],
        expected_sha256: str | None,
        held: leasing.HeldLease,
    ) -> dict[str, Any]:
        """The lease is confirmed (`held.confirm`) right before S3's commit, which no
        database write can fence: a completion whose lease was taken over meanwhile must
        not overwrite the object its successor stores (LeaseLost; its own multipart upload
        is aborted)."""

        def open_stream() -> BinaryIO:
            return self.staging.open_assembled(session.id, chunks)

        # Nothing reaches the bucket unless the bytes really are audio we accept.
        facts = await self._inspect(session, open_stream)
        content_type = facts.content_type if facts else self._content_type_from_name(session)
        target = self._object_target(session)
        key = target.key
        facts_metadata = facts.as_metadata() if facts else {}
        if self.eager is not None:
            # The eager upload was created with what was known then (`_eager_target`): no
            # audio facts, and the SHA-256 only if declared at init. Rewriting metadata
            # would take a server-side copy of the whole object, so the facts stay in the
            # result and the notification. A Content-Type that turns out wrong makes
            # `finish` drop the upload; the plain path below then stores the file.
            eager = await self.eager.finish(
                session,
                chunks,
                expected_sha256=expected_sha256,
                content_type=content_type,
                confirm_lease=held.confirm,
            )
            if eager is not None:
                return self._result(key, eager.size_bytes, eager.sha256, content_type, facts)
        # S3 metadata is fixed when the multipart upload starts, so the file's SHA-256 must
        # be known by then: declared by the client (verified while uploading, before the
        # commit), or computed in a hashing pass first. Either way each byte is hashed once.
        if expected_sha256 is not None:
            sha256 = expected_sha256
        else:
            sha256 = await asyncio.to_thread(hash_stream, open_stream)
        metadata = {"sha256": sha256, **target.metadata, **facts_metadata}

        async def remember(upload_id: str) -> None:
            if not await self.store.remember_multipart_upload(
                session.id,
                object_key=key,
                upload_id=upload_id,
                lease=held.lease if self._fenced else None,
            ):
                raise LeaseLost()  # the row names the new holder's upload: leave it

        assembled = await upload_in_parts(
            self.objects,
            open_stream,
            key=key,
            content_type=content_type,
            metadata=metadata,
            part_size_bytes=self.policy.part_size_bytes,
            concurrency=self.policy.part_concurrency,
            expected_sha256=expected_sha256,
            on_started=remember,
            before_commit=held.confirm,
        )
        return self._result(key, assembled.size_bytes, sha256, content_type, facts)

    def _result(
        self,
        key: str,
        size_bytes: int,
        sha256: str,
        content_type: str,
        facts: AudioFacts | None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "file_path_on_upload_service": self.objects.url_for(key),
            "bucket": self.objects.bucket,
            "key": key,
            "size": size_bytes,
            "sha256": sha256,
            "content_type": content_type,
        }
        if facts is not None:
            result.update(
                audio_format=facts.format,
                codec=facts.codec,
                duration_seconds=facts.duration_seconds,
                sample_rate=facts.sample_rate,
                channels=facts.channels,
                bitrate=facts.bitrate,
            )
        return result

    async def _discard_eager(self, session: UploadSession) -> None:
        # The row, not our copy, names the upload a flush may have opened meanwhile.
        if self.eager is not None:
            await self.eager.discard(await self.store.get(session.id) or session)

    def _object_target(self, session: UploadSession) -> ObjectTarget:
        """Where the session's object goes. Deterministic, so an eager flush started
        before the bytes were inspected names the same object as `complete`."""
        key = session.object_key or legacy_object_key(
            self.policy.key_prefix,
            session.owner_sub,
            session.main_service_file_id,
            session.id,
            session.original_file_name,
        )
        metadata = {
            "upload-session-id": session.id,
            "main-service-file-id": str(session.main_service_file_id),
        }
        return ObjectTarget(key, self._content_type_from_name(session), metadata)

    def _eager_target(self, session: UploadSession, head: BinaryIO) -> ObjectTarget | None:
        """What an eager upload is created with, from the session and the head of its
        staged bytes: the Content-Type the completion's audio check will find (the
        extension's while the head is too short to tell), and the metadata known at init.
        None: the head shows the completion will refuse the file, so nothing is sent.
        Blocking (reads the head)."""
        target = self._object_target(session)
        content_type = target.content_type
        if self._inspect_audio is not None and self._sniff_head is not None:
            try:
                detected = self._sniff_head(head, session.original_file_name)
            except audio.UnsupportedAudio as refusal:
                log.info("upload.eager_not_started", session_id=session.id, reason=refusal.reason)
                return None
            content_type = detected or content_type
        metadata = dict(target.metadata)
        if session.sha256 is not None:
            metadata["sha256"] = session.sha256
        return ObjectTarget(target.key, content_type, metadata)

    async def _inspect(
        self, session: UploadSession, open_stream: Callable[[], BinaryIO]
    ) -> AudioFacts | None:
        if self._inspect_audio is None:
            return None
        inspect = self._inspect_audio

        def run() -> AudioFacts:
            with open_stream() as stream:
                return inspect(stream, session.original_file_name)

        try:
            return await asyncio.to_thread(run)
        except audio.UnsupportedAudio as refusal:
            log.info("upload.audio_refused", session_id=session.id, reason=refusal.reason)
            raise UnsupportedAudio(refusal.reason) from None

    # ------------------------------------------------------------ status & abort
    async def status(self, principal: Principal, session_id: str) -> SessionView:
        session = await self._owned(principal, session_id)
        chunks = await self.store.list_chunks(session_id)
        return SessionView(
            session=session, state=session.effective_state(self._clock()), chunks=chunks
        )

    async def abort(self, principal: Principal, session_id: str) -> UploadSession:
        session = await self._owned(principal, session_id)
        now = self._clock()
        state = session.effective_state(now)
        if state is SessionState.COMPLETED:
            raise SessionNotCompletable("A completed upload cannot be aborted.")
        if state is SessionState.COMPLETING:
            raise CompletionInProgress()
        if state is SessionState.EXPIRED:
            raise SessionExpired()
        if state is SessionState.UPLOADING:
            changed = await self.store.set_state(
                session_id,
                now=now,
                state=SessionState.ABORTED,
                only_from=[SessionState.UPLOADING],
            )
            if not changed:
                current = await self.store.get(session_id)
                if current is None or current.state is not SessionState.ABORTED:
                    raise CompletionInProgress()
        if self.eager is not None:
            await self.eager.take_over(session_id)
            await self._discard_eager(session)
            self.eager.forget(session_id)
        await self.staging.remove_session(session_id)
        log.info("upload.aborted", session_id=session_id)
        return replace(session, state=SessionState.ABORTED)

    # -------------------------------------------------------------------- helpers
    async def _owned(self, principal: Principal, session_id: str) -> UploadSession:
        session = await self.store.get(session_id)
        if session is None:
            raise SessionNotFound()
        self._check_owner(principal, session)
        return session

    @staticmethod
    def _check_owner(principal: Principal, session: UploadSession) -> None:
        # Another user's session is reported exactly like a missing one: no existence leak.
        if session.owner_sub != principal.sub:
            raise SessionNotFound()
        if principal.file_id is not None and principal.file_id != session.main_service_file_id:
            raise Forbidden("The token's file_id claim does not match this upload.")

    def _finished_outcome(self, session: UploadSession, now: datetime) -> CompletionOutcome | None:
        state = session.effective_state(now)
        if state is SessionState.COMPLETED and session.result is not None:
            return CompletionOutcome(result=session.result, notified=True)
        if state is SessionState.EXPIRED:
            raise SessionExpired()
        if state in (SessionState.ABORTED, SessionState.FAILED):
            raise SessionNotCompletable(details={"state": state.value})
        # completing: the work lease decides whether to wait for its holder or take over.
        return None

    def _check_file_id_claim(self, principal: Principal, main_service_file_id: int) -> None:
        if principal.file_id is not None and principal.file_id != main_service_file_id:
            raise Forbidden("The token's file_id claim does not match main_service_file_id.")

    def _check_file_name(self, file_name: str) -> None:
        check_file_name(file_name, self.policy.allowed_extensions)

    def _check_index(self, session: UploadSession, index: int) -> None:
        limit = self.policy.max_chunks
        if session.total_chunks is not None:
            limit = min(limit, session.total_chunks)
        if not 0 <= index < limit:
            raise ValidationFailed(
                f"chunk_index must be between 0 and {limit - 1}.",
                details={"chunk_index": index, "max_index": limit - 1},
            )

    @staticmethod
    def _check_chunk_set(chunks: Sequence[StoredChunk], total_chunks: int) -> None:
        present = {chunk.index for chunk in chunks}
        missing = [i for i in range(total_chunks) if i not in present]
        unexpected = sorted(i for i in present if i >= total_chunks)
        if missing or unexpected:
            raise ChunksIncomplete(
                details={
                    "missing": missing[:1000],
                    "missing_count": len(missing),
                    "unexpected": unexpected,
                }
            )

    def _expiry_from(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.policy.session_ttl_seconds)

    @staticmethod
    def _content_type_from_name(session: UploadSession) -> str:
        extension = file_extension(session.original_file_name)
        return (
            _EXTENSION_CONTENT_TYPES.get(extension)
            or mimetypes.types_map.get("." + extension)
            or "application/octet-stream"
        )
