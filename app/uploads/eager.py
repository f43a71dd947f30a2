"""Eager flush: send contiguous chunks to S3 as multipart parts while the upload goes on,
so that `complete` only sends the tail and commits.

Parts are cut from the byte stream of the file, not from chunks: part n holds bytes
[(n-1)*P, n*P) of the file (P = S3_PART_SIZE_BYTES), so every part but the last has the
same size (>= 5 MiB), whatever sizes the client picks for its chunks. A part is flushed
only once the chunks from index 0 cover it completely.

Invariants:
* whenever a multipart upload is open for a session, the session row's `object_key` and
  `multipart_upload_id` name it (it is recorded, conditionally on the session still
  uploading, before any part is sent; a crash in between leaves an upload no live
  session owns, which the janitor's prefix listing reclaims);
* a part row is written only after S3 acknowledged the part, and records which chunk
  bytes it holds (`covers`: index, sha256, size, start offset of each chunk). A part is
  reused only when its covers equal those of the current layout, so a re-sent chunk (or
  one of a new size, which moves every later offset) makes the parts it touches be sent
  again under the same part numbers. S3 also checks each listed ETag, so a late stale
  part can fail a completion (it is then retried) but never corrupt an object;
* every part the store holds is in the CompleteMultipartUpload list (Ceph RGW answers
  InvalidPart otherwise, where AWS and MinIO ignore unlisted parts). A file that got
  shorter (chunks re-sent smaller) can leave parts past its new end: `finish` sees them
  in the part rows before sending anything, and lists the upload's parts in S3 right
  before the commit (a crash may have left a part with no row); either way it aborts
  the eager upload and the plain path stores the file under a fresh one;
* staged chunk files stay until the completion succeeds: the audio check and any
  re-send read them, and a crash loses nothing but work;
* a failure here never fails a chunk upload: it is logged and the work left to
  `complete`;
* one flusher per session in this process, and `complete`/`abort` take over: they stop
  it (in-flight parts finish) before they read the parts. Across replicas a pass runs
  only while it holds the session's work lease (`app.uploads.leasing`): a replica that
  cannot take it skips the pass (the holder flushes, or `complete` sends the rest); a
  pass notices a `complete` elsewhere (the session leaves `uploading`) within
  STATE_CHECK_SECONDS and ends, releasing the lease; part rows are written only while
  the lease is still held (fenced by its generation). The ETag check above keeps any
  overlap that slips through safe.

The whole-file SHA-256 is computed once per byte while the parts are read for upload:
the flusher keeps, in memory, the hash state of the contiguous run of parts it has read,
with a snapshot after each part so a changed part rewinds it instead of discarding it.
SHA-256 states cannot be combined, so after a restart (or on another replica) `complete`
reads the flushed prefix back from staging once more to hash it.

What the object is created with: S3 fixes Content-Type and metadata at
CreateMultipartUpload, long before the file is whole, and changing them afterwards takes
a server-side copy of the object (as slow as a second upload on some stores, and capped
at 5 GiB). So the upload is created with only what is known then (`head_target`):
* the Content-Type the audio check will give, judged from the head of the staged chunks
  (audio.sniff_head: the same signature the check reads); the extension's while the
  head is too short to tell; and no upload at all when the head is clearly not audio
  (complete then refuses the file with 415 as it would anyway);
* the metadata known at init (session id, file id, a `sha256` declared at init).
The audio facts and a computed SHA-256 are therefore not in an eager object's metadata;
they are in the completion result and the notification. The Content-Type used is kept on
the session row, so `finish` (in any process) can tell when the completion's full check
found another one (chunk 0 re-sent as another format, or a short head's extension
guess was wrong): it then aborts the eager upload and the caller stores the file by the
plain path, with full metadata. That is rare and costs one plain upload; a copy would
be no cheaper and would not work past 5 GiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol

import structlog

from app.errors import ChecksumMismatch
from app.uploads import buffer_budget, leasing
from app.uploads.assembly import abort_quietly, first_service_error, read_part_body
from app.uploads.models import SessionState, StoredChunk, UploadSession, utc_now
from app.uploads.ports import ChunkStaging, Lease, LeaseStore, MultipartObjectStore, SessionStore

if TYPE_CHECKING:
    from _hashlib import HASH

log = structlog.get_logger(__name__)

MAX_PARTS = 10_000
# How long `complete` waits for an in-flight flush to finish its parts before cancelling.
TAKE_OVER_WAIT_SECONDS = 60.0
# How often a pass re-reads the session's state, to stop once a `complete` (on any
# replica) has claimed it.
STATE_CHECK_SECONDS = 1.0


class CoveredChunk(NamedTuple):
    chunk_index: int
    sha256: str
    size_bytes: int
    start: int


@dataclass(frozen=True)
class PlannedPart:
    part_number: int
    start: int
    size_bytes: int
    covers: tuple[CoveredChunk, ...]


@dataclass(frozen=True)
class FlushedPart:
    part_number: int
    size_bytes: int
    etag: str
    covers: tuple[CoveredChunk, ...]

    def holds(self, planned: PlannedPart) -> bool:
        return self.size_bytes == planned.size_bytes and self.covers == planned.covers


@dataclass(frozen=True)
class ObjectTarget:
    key: str
    content_type: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class EagerResult:
    size_bytes: int
    sha256: str
    parts_sent_at_complete: int
    prefix_rehashed_bytes: int


class StalePartsError(Exception):
    """The eager upload holds parts past the end of the file (see the module doc)."""


class PartStore(Protocol):
    async def list_parts(self, session_id: str, upload_id: str) -> list[FlushedPart]: ...

    async def record_part(
        self,
        session_id: str,
        upload_id: str,
        part: FlushedPart,
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> bool:
        """Record the part; with `lease`, only while it is still held (False if not)."""
        ...

    async def clear_parts(self, session_id: str) -> None: ...

    async def adopt_upload(
        self, session_id: str, *, object_key: str, upload_id: str, content_type: str
    ) -> bool:
        """Name the upload (and the Content-Type it was created with) on the session row
        if it is uploading and names none yet."""
        ...

    async def created_content_type(self, session_id: str, upload_id: str) -> str | None:
        """The Content-Type `adopt_upload` recorded for this upload; None if it did not."""
        ...


def contiguous_prefix(chunks: Sequence[StoredChunk]) -> list[StoredChunk]:
    prefix: list[StoredChunk] = []
    for chunk in sorted(chunks, key=lambda c: c.index):
        if chunk.index != len(prefix):
            break
        prefix.append(chunk)
    return prefix


def plan_parts(
    chunks: Sequence[StoredChunk], part_size_bytes: int, *, include_tail: bool
) -> list[PlannedPart]:
    """The parts of the file made of `chunks` (in order); without `include_tail`, only
    the full-size ones."""
    spans: list[CoveredChunk] = []
    offset = 0
    for chunk in chunks:
        if chunk.size_bytes:
            spans.append(CoveredChunk(chunk.index, chunk.sha256, chunk.size_bytes, offset))
        offset += chunk.size_bytes
    total = offset
    count = total // part_size_bytes
    if include_tail and total % part_size_bytes:
        count += 1
    parts: list[PlannedPart] = []
    first = 0
    for number in range(1, count + 1):
        start = (number - 1) * part_size_bytes
        end = min(start + part_size_bytes, total)
        while spans[first].start + spans[first].size_bytes <= start:
            first += 1
        covers: list[CoveredChunk] = []
        position = first
        while position < len(spans) and spans[position].start < end:
            covers.append(spans[position])
            position += 1
        parts.append(PlannedPart(number, start, end - start, tuple(covers)))
    return parts


class PrefixDigest:
    """SHA-256 of parts 1..m as they were read, with the state after each part."""

    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id
        self._parts: list[PlannedPart] = []
        self._states: list[HASH] = [hashlib.sha256()]

    @property
    def count(self) -> int:
        return len(self._parts)

    def rewind_to(self, plan: Sequence[PlannedPart]) -> int:
        """Keep only the leading parts still laid out as in `plan`; return how many."""
        keep = 0
        while keep < len(self._parts) and keep < len(plan) and self._parts[keep] == plan[keep]:
            keep += 1
        del self._parts[keep:]
        del self._states[keep + 1 :]
        return keep

    def state(self) -> HASH:
        return self._states[-1].copy()

    def extend(self, part: PlannedPart, state: HASH) -> None:
        if part.part_number == len(self._parts) + 1:
            self._parts.append(part)
            self._states.append(state)


def _read_part(stream: BinaryIO, part: PlannedPart) -> io.BytesIO:
    stream.seek(part.start)
    body, size = read_part_body(stream, part.size_bytes)
    if size != part.size_bytes:
        raise OSError(f"staged data ends before part {part.part_number}")
    return body


class EagerFlusher:
    def __init__(
        self,
        store: SessionStore,
        parts: PartStore,
        staging: ChunkStaging,
        objects: MultipartObjectStore,
        *,
        target: Callable[[UploadSession], ObjectTarget],
        head_target: Callable[[UploadSession, BinaryIO], ObjectTarget | None],
        part_size_bytes: int,
        concurrency: int,
        clock: Callable[[], datetime] = utc_now,
        leases: LeaseStore | None = None,
        lease_seconds: float = 10.0,
    ) -> None:
        self.store = store
        self.leases = leases
        self._lease_seconds = lease_seconds
        self.parts = parts
        self.staging = staging
        self.objects = objects
        self._target = target
        self._head_target = head_target
        self._part_size_bytes = part_size_bytes
        self._concurrency = concurrency
        self._clock = clock
        # Bounds the part buffers of all background flushes together, so memory stays
        # flat however many sessions upload at once.
        self._buffers = buffer_budget.slots(concurrency, part_size_bytes)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._stopped: set[str] = set()
        self._digests: dict[str, PrefixDigest] = {}
        # Set by `poke` and `take_over`: wakes a pass waiting on its parts in flight.
        self._wakes: dict[str, asyncio.Event] = {}
        # Chunk 0's SHA-256 when its head was judged not audio, so a session that keeps
        # receiving chunks is not judged again for each (a changed chunk 0 is).
        self._refused_heads: dict[str, str] = {}
        # Bytes received here per session, and the sessions whose last pass found a gap
        # in their chunks (see `poke`).
        self._arrived: dict[str, int] = {}
        self._gapped: set[str] = set()

    # ------------------------------------------------------------ background loop
    def poke(self, session_id: str, *, index: int, size_bytes: int) -> None:
        """A chunk arrived: flush what is ready, in the background.

        A pass reads the session's whole chunk list, so with small chunks it runs only
        when the bytes received here cross a part boundary, for chunk 0, or while the last
        pass saw a gap in the chunks (the one filling it may complete parts): not for
        every chunk. A pass skipped only delays work: the next one, or `complete`, plans
        from the database and sends whatever is still missing."""
        if session_id in self._stopped:
            return
        before = self._arrived.get(session_id, 0)
        self._arrived[session_id] = before + size_bytes
        crossed = (before + size_bytes) // self._part_size_bytes > before // self._part_size_bytes
        if not crossed and index != 0 and session_id not in self._gapped:
            return
        if session_id in self._tasks:
            self._dirty.add(session_id)
            wake = self._wakes.get(session_id)
            if wake is not None:
                wake.set()
            return
        self._tasks[session_id] = asyncio.create_task(self._run(session_id))

    async def _run(self, session_id: str) -> None:
        try:
            while session_id not in self._stopped:
                self._dirty.discard(session_id)
                try:
                    if not await self._flush_holding_lease(session_id):
                        return
                except Exception as error:  # noqa: BLE001 - complete does the work instead
                    log.warning(
                        "upload.eager_flush_failed",
                        session_id=session_id,
                        error_type=type(error).__name__,
                    )
                    return
                if session_id not in self._dirty:
                    return
        finally:
            self._tasks.pop(session_id, None)
            self._wakes.pop(session_id, None)

    async def _flush_holding_lease(self, session_id: str) -> bool:
        """One pass under the session's work lease; False when another replica (or a
        `complete`) holds it, so this one leaves the work to it."""
        if self.leases is None:
            await self.flush_once(session_id)
            return True
        held = await leasing.try_hold(
            self.leases, session_id, ttl_seconds=self._lease_seconds, clock=self._clock
        )
        if held is None:
            log.debug("upload.eager_lease_busy", session_id=session_id)
            return False
        async with held:
            await self.flush_once(session_id, held)
        return True

    async def flush_once(self, session_id: str, held: leasing.HeldLease | None = None) -> int:
        """One pass: send every full part the contiguous chunks cover and S3 does not hold
        yet. Chunks that arrive while its parts are in flight extend the pass (so the
        pipeline of part uploads does not drain between passes). Returns the number of
        parts sent."""
        session = await self.store.get(session_id)
        if session is None or session.state is not SessionState.UPLOADING:
            return 0
        key = self._target(session).key
        upload_id = session.multipart_upload_id
        launched: dict[int, PlannedPart] = {}
        in_flight: set[asyncio.Task[None]] = set()
        wake = self._wakes.setdefault(session_id, asyncio.Event())
        sent = 0
        checked_at = time.monotonic()
        halted = False
        fence = held.lease if held is not None else None

        async def state_ok() -> bool:
            """False, for the rest of the pass, once the lease is lost or the session
            stopped uploading (a `complete` on another replica waits for us to let go)."""
            nonlocal checked_at, halted
            if held is not None and held.lost.is_set():
                halted = True
            elif time.monotonic() - checked_at >= STATE_CHECK_SECONDS:
                checked_at = time.monotonic()
                current = await self.store.get(session_id)
                halted = current is None or current.state is not SessionState.UPLOADING
            return not halted

        async with asyncio.TaskGroup() as group:
            while session_id not in self._stopped and not halted:
                self._dirty.discard(session_id)
                wake.clear()
                listed = await self.store.list_chunks(session_id)
                chunks = contiguous_prefix(listed)
                if len(chunks) < len(listed):
                    self._gapped.add(session_id)
                else:
                    self._gapped.discard(session_id)
                plan = plan_parts(chunks, self._part_size_bytes, include_tail=False)
                plan = plan[: MAX_PARTS - 1]
                if not plan:
                    break
                if upload_id is None:
                    if self._refused_heads.get(session_id) == chunks[0].sha256:
                        break  # judged already; complete will refuse the file
                    target = await asyncio.to_thread(self._target_from_head, session, chunks)
                    if target is None:
                        # The head shows the file will be refused: send nothing.
                        self._refused_heads[session_id] = chunks[0].sha256
                        break
                    upload_id = await self._open_upload(session_id, target)
                    if upload_id is None:
                        break
                if any(launched.get(p.part_number, p) != p for p in plan):
                    # A part in flight no longer holds what the plan says (a chunk was
                    # re-sent): the next pass sends it again once this one has landed, so
                    # two uploads of one part number never race.
                    self._dirty.add(session_id)
                    break
                recorded = {
                    p.part_number: p for p in await self.parts.list_parts(session_id, upload_id)
                }
                digest = self._digest_for(session_id, upload_id)
                hashed = digest.rewind_to(plan)
                work = [
                    part
                    for part in plan
                    if part.part_number not in launched
                    and (
                        part.part_number > hashed
                        or not (
                            part.part_number in recorded and recorded[part.part_number].holds(part)
                        )
                    )
                ]
                stream = (
                    await asyncio.to_thread(self.staging.open_assembled, session_id, chunks)
                    if work
                    else None
                )
                try:
                    for part in work:
                        if session_id in self._stopped or not await state_ok():
                            break
                        await self._buffers.acquire()
                        try:
                            assert stream is not None  # opened since there is work
                            data = await asyncio.to_thread(
                                self._read_and_hash, stream, part, digest
                            )
                        except BaseException:
                            self._buffers.release()
                            raise
                        stored = recorded.get(part.part_number)
                        if stored is not None and stored.holds(part):
                            self._buffers.release()  # read only to extend the hash
                            del data
                            continue
                        sent += 1
                        launched[part.part_number] = part
                        task = group.create_task(
                            self._send(session_id, upload_id, key, part, data, fence)
                        )
                        # Only the task may hold the part: this frame lives on while the
                        # flusher waits for more chunks (8 MiB per session otherwise).
                        del data
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                finally:
                    if stream is not None:
                        await asyncio.to_thread(stream.close)
                if session_id in self._dirty:
                    continue
                if not in_flight:
                    break
                # Sleep until a chunk arrives (extend the pass) or every part has landed.
                woken = asyncio.ensure_future(wake.wait())
                landed = asyncio.ensure_future(asyncio.wait(set(in_flight)))
                try:
                    await asyncio.wait({woken, landed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                    landed.cancel()
                if session_id not in self._dirty:
                    break
        if sent:
            log.info("upload.eager_flushed", session_id=session_id, parts=sent)
        return sent

    async def _send(
        self,
        session_id: str,
        upload_id: str,
        key: str,
        part: PlannedPart,
        data: io.BytesIO,
        fence: Lease | None = None,
    ) -> None:
        try:
            etag = await self.objects.upload_part(key, upload_id, part.part_number, data)
        finally:
            del data
            self._buffers.release()
        await self.parts.record_part(
            session_id,
            upload_id,
            FlushedPart(part.part_number, part.size_bytes, etag, part.covers),
            now=self._clock(),
            lease=fence,
        )

    @staticmethod
    def _read_and_hash(stream: BinaryIO, part: PlannedPart, digest: PrefixDigest) -> io.BytesIO:
        data = _read_part(stream, part)
        if part.part_number == digest.count + 1:
            state = digest.state()
            with data.getbuffer() as view:
                state.update(view)
            digest.extend(part, state)
        return data

    def _target_from_head(
        self, session: UploadSession, chunks: Sequence[StoredChunk]
    ) -> ObjectTarget | None:
        with self.staging.open_assembled(session.id, chunks) as stream:
            return self._head_target(session, stream)

    async def _open_upload(self, session_id: str, target: ObjectTarget) -> str | None:
        upload_id = await self.objects.start(
            target.key, content_type=target.content_type, metadata=target.metadata
        )
        try:
            adopted = await self.parts.adopt_upload(
                session_id,
                object_key=target.key,
                upload_id=upload_id,
                content_type=target.content_type,
            )
        except BaseException:
            await abort_quietly(self.objects, target.key, upload_id)
            raise
        if not adopted:
            await abort_quietly(self.objects, target.key, upload_id)
            return None
        return upload_id

    def _digest_for(self, session_id: str, upload_id: str) -> PrefixDigest:
        digest = self._digests.get(session_id)
        if digest is None or digest.upload_id != upload_id:
            digest = self._digests[session_id] = PrefixDigest(upload_id)
        return digest

    # ------------------------------------------------------------------ take over
    async def take_over(self, session_id: str) -> None:
        """Stop flushing this session (complete or abort owns it now); in-flight parts
        finish first, within TAKE_OVER_WAIT_SECONDS."""
        self._stopped.add(session_id)
        wake = self._wakes.get(session_id)
        if wake is not None:
            wake.set()
        task = self._tasks.get(session_id)
        if task is None:
            return
        _, pending = await asyncio.wait({task}, timeout=TAKE_OVER_WAIT_SECONDS)
        for late in pending:
            late.cancel()
            await asyncio.gather(late, return_exceptions=True)

    def release(self, session_id: str) -> None:
        """The session may be flushed again (its completion failed)."""
        self._stopped.discard(session_id)

    def forget(self, session_id: str) -> None:
        self._stopped.discard(session_id)
        self._wakes.pop(session_id, None)
        self._refused_heads.pop(session_id, None)
        self._dirty.discard(session_id)
        self._digests.pop(session_id, None)
        self._arrived.pop(session_id, None)
        self._gapped.discard(session_id)

    async def discard(self, session: UploadSession) -> None:
        """Abort the session's eager upload (if any) and forget its parts."""
        if session.multipart_upload_id is not None and session.object_key is not None:
            await abort_quietly(self.objects, session.object_key, session.multipart_upload_id)
        await self.parts.clear_parts(session.id)
        self._digests.pop(session.id, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------- complete
    async def finish(
        self,
        session: UploadSession,
        chunks: Sequence[StoredChunk],
        *,
        expected_sha256: str | None,
        content_type: str,
    ) -> EagerResult | None:
        """Send the parts S3 does not hold yet and commit the object as `content_type`.
        None when the session has no usable eager upload (the caller then assembles from
        scratch): none was opened, or it was created with another Content-Type (S3 fixes
        it at creation; rare: chunk 0 changed, or its head was too short to tell and the
        extension's type was wrong). Call after `take_over`. On failure the upload is
        aborted and its parts forgotten."""
        upload_id = session.multipart_upload_id
        if upload_id is None or session.object_key is None:
            return None
        target = self._target(session)
        plan = plan_parts(chunks, self._part_size_bytes, include_tail=True)
        created = await self.parts.created_content_type(session.id, upload_id)
        if (
            target.key != session.object_key
            or created != content_type
            or not plan
            or len(plan) > MAX_PARTS
        ):
            log.info(
                "upload.eager_upload_dropped",
                session_id=session.id,
                created_content_type=created,
                content_type=content_type,
            )
            await self.discard(session)
            return None
        try:
            return await self._finish(
                session.id, upload_id, target.key, chunks, plan, expected_sha256
            )
        except StalePartsError as stale:
            log.info("upload.eager_upload_dropped", session_id=session.id, reason=str(stale))
            await asyncio.shield(self.discard(session))
            return None
        except BaseException:
            await asyncio.shield(self.discard(session))
            raise

    async def _finish(
        self,
        session_id: str,
        upload_id: str,
        key: str,
        chunks: Sequence[StoredChunk],
        plan: Sequence[PlannedPart],
        expected_sha256: str | None,
    ) -> EagerResult:
        recorded = {p.part_number: p for p in await self.parts.list_parts(session_id, upload_id)}
        beyond = sorted(n for n in recorded if n > len(plan))
        if beyond:
            raise StalePartsError(f"parts {beyond} lie past the end of the file")
        digest = self._digests.get(session_id)
        hashed = digest.rewind_to(plan) if digest and digest.upload_id == upload_id else 0
        state = digest.state() if digest and hashed else hashlib.sha256()
        etags = {
            n: part.etag
            for n, part in recorded.items()
            if n <= len(plan) and part.holds(plan[n - 1])
        }
        work = [p for p in plan if p.part_number > hashed or p.part_number not in etags]
        rehashed = sum(
            p.size_bytes for p in work if p.part_number in etags and p.part_number > hashed
        )
        sent = 0
        slots = buffer_budget.slots(self._concurrency, self._part_size_bytes)

        def read(stream: BinaryIO, part: PlannedPart) -> io.BytesIO:
            data = _read_part(stream, part)
            if part.part_number > hashed:
                with data.getbuffer() as view:
                    state.update(view)
            return data

        async def send(part: PlannedPart, data: io.BytesIO) -> None:
            try:
                etags[part.part_number] = await self.objects.upload_part(
                    key, upload_id, part.part_number, data
                )
            finally:
                slots.release()

        started = time.perf_counter()
        stream = await asyncio.to_thread(self.staging.open_assembled, session_id, chunks)
        try:
            async with asyncio.TaskGroup() as group:
                for part in work:
                    await slots.acquire()
                    data = await asyncio.to_thread(read, stream, part)
                    if part.part_number in etags:
                        slots.release()
                        continue
                    sent += 1
                    group.create_task(send(part, data))
        except BaseExceptionGroup as group_error:
            raise first_service_error(group_error) from group_error
        finally:
            await asyncio.to_thread(stream.close)
        sha256 = state.hexdigest()
        if expected_sha256 is not None and expected_sha256 != sha256:
            raise ChecksumMismatch(
                "The assembled file's SHA-256 does not match the declared sha256.",
                details={"expected": expected_sha256, "actual": sha256},
            )
        # The Ceph rule: nothing in the upload that the commit would leave unlisted.
        unlisted = sorted(set(await self.objects.list_parts(key, upload_id)) - set(etags))
        if unlisted:
            raise StalePartsError(f"S3 holds parts {unlisted} past the end of the file")
        sent_at = time.perf_counter()
        await self.objects.finish(key, upload_id, [etags[p.part_number] for p in plan])
        committed_at = time.perf_counter()
        await self.parts.clear_parts(session_id)
        self.forget(session_id)
        log.info(
            "upload.eager_completed",
            session_id=session_id,
            parts=len(plan),
            parts_sent_at_complete=sent,
            prefix_rehashed_bytes=rehashed,
            send_seconds=round(sent_at - started, 3),
            commit_seconds=round(committed_at - sent_at, 3),
        )
        return EagerResult(
            size_bytes=sum(p.size_bytes for p in plan),
            sha256=sha256,
            parts_sent_at_complete=sent,
            prefix_rehashed_bytes=rehashed,
        )
