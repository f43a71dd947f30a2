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

The whole-file SHA-256 is computed once per byte while the parts are read for upload,
in order, and its state after each part is saved in that part's row
(`app.uploads.sha256_state`: 40 bytes at a 64-byte boundary) together with the layout it
was computed on, a digest of the covers of parts 1..n (`layout_sha256`). Whichever
replica continues the flush, or runs `complete` (after a take-over of a dead holder too:
the rows are durable and fenced like the parts), resumes the hash from the last row whose
layout still matches the current plan and reads only the parts after it: the flushed
prefix is never read back. A re-sent chunk that changes part n changes the layout of n
and of every later part, so none of their saved states is used again until the flush
hashes them anew (and re-records them). Each process also keeps the states in memory
(`PrefixDigest`), with one per part so a changed part rewinds the hash instead of
discarding it. Where libcrypto cannot be loaded (hashlib fallback), or a part size is not
a multiple of 64 bytes, no state is saved and a replica that did not hash the prefix
itself reads it back once more, as before.

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
import contextlib
import dataclasses
import errno
import hashlib
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import BinaryIO, NamedTuple, Protocol

import structlog

from app.errors import ChecksumMismatch, LeaseLost
from app.uploads import buffer_budget, leasing, sha256_state
from app.uploads.assembly import PartData, abort_quietly, cut_part, first_service_error
from app.uploads.models import SessionState, StoredChunk, UploadSession, utc_now
from app.uploads.ports import (
    ChunkStaging,
    Hasher,
    Lease,
    LeaseStore,
    MultipartObjectStore,
    SessionStore,
)
from app.uploads.sha256_state import Sha256

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


@dataclasses.dataclass(frozen=True)
class PlannedPart:
    part_number: int
    start: int
    size_bytes: int
    covers: tuple[CoveredChunk, ...]


class HashCheckpoint(NamedTuple):
    """The file's SHA-256 state after a part, and the layout of parts 1..n it holds for."""

    layout_sha256: str
    state: bytes


@dataclasses.dataclass(frozen=True)
class FlushedPart:
    part_number: int
    size_bytes: int
    etag: str
    covers: tuple[CoveredChunk, ...]
    checkpoint: HashCheckpoint | None = None

    def holds(self, planned: PlannedPart) -> bool:
        return self.size_bytes == planned.size_bytes and self.covers == planned.covers


@dataclasses.dataclass(frozen=True)
class ObjectTarget:
    key: str
    content_type: str
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True)
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


def _chain_layout(before: str, part: PlannedPart) -> str:
    text = f"{before}|{part.part_number},{part.start},{part.size_bytes}:" + ";".join(
        f"{c.chunk_index},{c.sha256},{c.size_bytes},{c.start}" for c in part.covers
    )
    return hashlib.sha256(text.encode()).hexdigest()


class PrefixDigest:
    """The layout of parts 1..m as last planned, with the digest of each leading run of
    them (`layout`) and, where known, the file's SHA-256 state after it."""

    def __init__(self, upload_id: str) -> None:
        self.upload_id = upload_id
        self._parts: list[PlannedPart] = []
        self._layouts: list[str] = [""]
        self._states: list[Sha256 | None] = [sha256_state.new()]
        self._hashed = 0

    def align(self, plan: Sequence[PlannedPart]) -> int:
        """Keep only the leading parts still laid out as in `plan`, lay out the rest of
        it, and return how many parts the hash covers (`hashed`)."""
        keep = 0
        while keep < len(self._parts) and keep < len(plan) and self._parts[keep] == plan[keep]:
            keep += 1
        del self._parts[keep:]
        del self._layouts[keep + 1 :]
        del self._states[keep + 1 :]
        self._hashed = min(self._hashed, keep)
        while self._states[self._hashed] is None:
            self._hashed -= 1
        for part in plan[keep:]:
            self._parts.append(part)
            self._layouts.append(_chain_layout(self._layouts[-1], part))
            self._states.append(None)
        return self.hashed

    @property
    def hashed(self) -> int:
        """The leading parts the hash state covers (the last one with a known state)."""
        return self._hashed

    def state(self) -> Sha256:
        """A copy of the state after the first `hashed` parts."""
        state = self._states[self.hashed]
        assert state is not None
        return state.copy()

    def adopt(self, count: int, state: Sha256) -> None:
        """The state after the first `count` parts (laid out as now), from a part row."""
        if self._hashed < count < len(self._states):
            self._states[count] = state
            self._hashed = count

    def extend(self, part: PlannedPart, state: Sha256) -> None:
        """The state after `part`, the next one to hash."""
        number = part.part_number
        in_order = number == self._hashed + 1 and number < len(self._states)
        if in_order and self._parts[number - 1] == part:
            self._states[number] = state
            self._hashed = number

    def checkpoint(self, count: int) -> HashCheckpoint | None:
        """What a part row saves: the state after the first `count` parts, if known and
        exportable (not with the hashlib fallback, nor off a 64-byte boundary)."""
        state = self._states[count] if count < len(self._states) else None
        if state is None:
            return None
        try:
            return HashCheckpoint(self._layouts[count], state.export())
        except sha256_state.NotSerialisable:
            return None

    def adopt_saved(self, recorded: dict[int, FlushedPart]) -> int:
        """Resume from the last part row whose state holds for the current layout (saved
        by any replica); return `hashed`."""
        for number in sorted(recorded, reverse=True):
            if number <= self.hashed:
                break
            checkpoint = recorded[number].checkpoint
            if (
                checkpoint is None
                or number >= len(self._layouts)
                or checkpoint.layout_sha256 != self._layouts[number]
            ):
                continue
            try:
                state = sha256_state.restore(checkpoint.state)
            except ValueError:
                continue
            part = self._parts[number - 1]
            if state is None or state.size_bytes != part.start + part.size_bytes:
                continue
            self.adopt(number, state)
            break
        return self.hashed


def _replaced_under_us(error: OSError) -> bool:
    """A staged chunk file removed, or replaced, by a re-send of its chunk."""
    return isinstance(error, FileNotFoundError) or error.errno == errno.ESTALE


def _cut_part(
    stream: BinaryIO, part: PlannedPart, hasher: Hasher | None, *, payload_sha256: bool
) -> PartData:
    data, size = cut_part(
        stream, part.start, part.size_bytes, hasher, payload_sha256=payload_sha256
    )
    if size != part.size_bytes:
        data.close()
        raise OSError(f"staged data ends before part {part.part_number}")
    return data


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
        if not sha256_state.available():
            # Still correct, but `complete` on another replica reads the prefix back.
            log.warning("upload.sha256_state_unavailable")

    # ------------------------------------------------------------ background loop
    def poke(self, session_id: str, *, index: int, size_bytes: int) -> None:
        """A chunk arrived: flush what is ready, in the background.

        A pass reads the session's whole chunk list, so with small chunks it runs only
        when the bytes received here cross a part boundary, when this chunk likely
        completes a part of the file (its place in the file, `index * size_bytes`, is
        exact for clients that send equal chunks: with a round-robin balancer the replica
        that got the chunk flushes, instead of one that crosses a boundary of its own
        count R chunks later), for chunk 0, or while the last pass saw a gap in the
        chunks (the one filling it may complete parts): not for every chunk. A pass
        skipped only delays work: the next one, or `complete`, plans from the database
        and sends whatever is still missing."""
        if session_id in self._stopped:
            return
        part = self._part_size_bytes
        before = self._arrived.get(session_id, 0)
        self._arrived[session_id] = before + size_bytes
        crossed = (before + size_bytes) // part > before // part
        offset = index * size_bytes
        completes = (offset + size_bytes) // part > offset // part
        if not (crossed or completes) and index != 0 and session_id not in self._gapped:
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
                digest.align(plan)
                # The states saved by whoever flushed before (any replica, or this one
                # before a restart): no need to read their parts back to hash them.
                hashed = digest.adopt_saved(recorded)
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
                            stored = recorded.get(part.part_number)
                            data, checkpoint = await asyncio.to_thread(
                                self._read_and_hash,
                                stream,
                                part,
                                digest,
                                # Only a part that will be sent needs its own hash.
                                self.objects.signs_payload
                                and not (stored is not None and stored.holds(part)),
                            )
                        except OSError as error:
                            self._buffers.release()
                            if not _replaced_under_us(error):
                                raise
                            # A chunk of this part was re-sent since the chunks were
                            # listed (its old file is gone): list them again.
                            self._dirty.add(session_id)
                            break
                        except BaseException:
                            self._buffers.release()
                            raise
                        if stored is not None and stored.holds(part):
                            self._buffers.release()  # read only to extend the hash
                            data.close()
                            del data
                            if checkpoint is not None and stored.checkpoint != checkpoint:
                                # Its saved state was computed on an older layout of the
                                # parts before it: save the current one for the next reader.
                                await self.parts.record_part(
                                    session_id,
                                    upload_id,
                                    dataclasses.replace(stored, checkpoint=checkpoint),
                                    now=self._clock(),
                                    lease=fence,
                                )
                            continue
                        sent += 1
                        launched[part.part_number] = part
                        task = group.create_task(
                            self._send(session_id, upload_id, key, part, data, checkpoint, fence)
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
        data: PartData,
        checkpoint: HashCheckpoint | None,
        fence: Lease | None = None,
    ) -> None:
        try:
            etag = await self.objects.upload_part(key, upload_id, part.part_number, data)
        except Exception:
            if isinstance(data, io.BytesIO) or await asyncio.to_thread(data.intact):
                raise
            # A chunk of this part was re-sent while it was on its way, and the file it
            # was read from is gone: not a storage failure. The next pass sends the part
            # again with the chunk as it is now (as for a part sent whole before the
            # re-send, whose row the next pass finds outdated).
            log.info("upload.eager_part_superseded", session_id=session_id, part=part.part_number)
            self._dirty.add(session_id)
            return
        finally:
            data.close()
            del data
            self._buffers.release()
        await self.parts.record_part(
            session_id,
            upload_id,
            FlushedPart(part.part_number, part.size_bytes, etag, part.covers, checkpoint),
            now=self._clock(),
            lease=fence,
        )

    @staticmethod
    def _read_and_hash(
        stream: BinaryIO, part: PlannedPart, digest: PrefixDigest, signs: bool
    ) -> tuple[PartData, HashCheckpoint | None]:
        """`signs`: the part will be sent to a store that signs its body (its own SHA-256
        is then taken from the same reads)."""
        if part.part_number != digest.hashed + 1:
            data = _cut_part(stream, part, None, payload_sha256=signs)
            return data, digest.checkpoint(part.part_number)
        state = digest.state()
        data = _cut_part(stream, part, state, payload_sha256=signs)
        digest.extend(part, state)
        return data, digest.checkpoint(part.part_number)

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
        confirm_lease: Callable[[], Awaitable[None]] | None = None,
    ) -> EagerResult | None:
        """Send the parts S3 does not hold yet and commit the object as `content_type`.
        None when the session has no usable eager upload (the caller then assembles from
        scratch): none was opened, or it was created with another Content-Type (S3 fixes
        it at creation; rare: chunk 0 changed, or its head was too short to tell and the
        extension's type was wrong). Call after `take_over`. On failure the upload is
        aborted and its parts forgotten, if `confirm_lease` (renewing the caller's work
        lease; also run right before the commit) shows they are still the caller's: else
        they belong to whoever took the lease, and LeaseLost is raised."""
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
            if not await self._discard_if_ours(session, confirm_lease):
                raise LeaseLost()
            return None
        try:
            return await self._finish(
                session.id, upload_id, target.key, chunks, plan, expected_sha256, confirm_lease
            )
        except LeaseLost:
            raise
        except StalePartsError as stale:
            log.info("upload.eager_upload_dropped", session_id=session.id, reason=str(stale))
            if not await asyncio.shield(self._discard_if_ours(session, confirm_lease)):
                raise LeaseLost() from stale
            return None
        except BaseException:
            # The first error is the answer, whatever the clean-up meets.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._discard_if_ours(session, confirm_lease))
            raise

    async def _discard_if_ours(
        self, session: UploadSession, confirm_lease: Callable[[], Awaitable[None]] | None
    ) -> bool:
        """`discard`, only while the caller still holds the work lease: a holder that
        stalled and was replaced (the janitor may have aborted the upload it was sending
        to) must not abort its successor's upload or clear its part rows. False when the
        lease is gone (nothing discarded); a database that cannot tell raises its error."""
        if confirm_lease is not None:
            try:
                await confirm_lease()
            except LeaseLost:
                return False
        await self.discard(session)
        return True

    async def _finish(
        self,
        session_id: str,
        upload_id: str,
        key: str,
        chunks: Sequence[StoredChunk],
        plan: Sequence[PlannedPart],
        expected_sha256: str | None,
        confirm_lease: Callable[[], Awaitable[None]] | None,
    ) -> EagerResult:
        recorded = {p.part_number: p for p in await self.parts.list_parts(session_id, upload_id)}
        beyond = sorted(n for n in recorded if n > len(plan))
        if beyond:
            raise StalePartsError(f"parts {beyond} lie past the end of the file")
        # The hash resumes after the last part hashed here or saved by any replica (see
        # the module doc): only the parts after it are read, the tail in the common case.
        digest = self._digest_for(session_id, upload_id)
        digest.align(plan)
        hashed = digest.adopt_saved(recorded)
        state = digest.state()
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

        def read(stream: BinaryIO, part: PlannedPart) -> PartData:
            hasher = state if part.part_number > hashed else None
            signs = self.objects.signs_payload and part.part_number not in etags
            return _cut_part(stream, part, hasher, payload_sha256=signs)

        async def send(part: PlannedPart, data: PartData) -> None:
            try:
                etags[part.part_number] = await self.objects.upload_part(
                    key, upload_id, part.part_number, data
                )
            finally:
                data.close()
                slots.release()

        started = time.perf_counter()
        stream = await asyncio.to_thread(self.staging.open_assembled, session_id, chunks)
        try:
            async with asyncio.TaskGroup() as group:
                for part in work:
                    await slots.acquire()
                    try:
                        data = await asyncio.to_thread(read, stream, part)
                    except BaseException:
                        slots.release()
                        raise
                    if part.part_number in etags:
                        data.close()
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
        if confirm_lease is not None:
            await confirm_lease()  # S3's commit cannot be fenced: renew right before it
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
