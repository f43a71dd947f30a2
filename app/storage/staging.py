"""Chunks on local disk until completion.

Layout under the root (`LOCAL_TEMP_CHUNK_PATH`):
  incoming/<random>.part              a chunk being received (any session, any order)
  sessions/<session id>/<index>.<random>.chunk    a received chunk

Invariants: a chunk file appears under `sessions/` only by an atomic rename of a fully
written, hashed temp file; every write has its own random name, so a re-sent chunk never
overwrites the file a completion may be reading. Blocking file I/O runs in worker
threads, in blocks of about `WRITE_BLOCK_BYTES`, so memory stays flat per request.

Staging cap (`max_bytes`, 0 for none): this process counts the bytes it stages (reserved
as they arrive, released when a file is removed) on top of what was on disk when last
measured; `refresh_usage` re-measures the tree (at start-up and every janitor pass), so
other replicas' files are counted from then on. Beyond the cap, or on ENOSPC, a write
fails with StagingFull and the caller discards the partial file.

Free-space reserve (`min_free_bytes`, STAGING_MIN_FREE_BYTES): the filesystem's free space
is probed (statvfs) at the first reservation and then again once this process has reserved
half of the room the last probe left above the reserve (at most FREE_SPACE_PROBE_BYTES
apart, every reservation once the room is small); a write that would leave less than the
reserve fails with StagingFull, so staging never takes the last bytes the database (by
default a SQLite file in the same directory) needs. The other half of the room is for
what others write meanwhile (the database, other replicas). The readiness probe (`check`)
never touches these counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO, Generic, NamedTuple, Protocol, TypeVar

from app.errors import ChunkTooLarge, StagingFull
from app.uploads.models import StagedFile, StoredChunk
from app.uploads.ports import ChunkPlacement

WRITE_BLOCK_BYTES = 256 * 1024
# A chunk this small that arrived whole is hashed on the event loop (~70 µs at 64 KiB with
# SHA-NI, less than a thread hand-off costs the loop) and written by its placement's move,
# in the hand-off that renames it (and, on the chunk route, records it): one hand-off less.
SMALL_CHUNK_BYTES = 64 * 1024
FREE_SPACE_PROBE_BYTES = 64 * 1024 * 1024
# writev takes at most IOV_MAX buffers per call.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _session_dir_name(session_id: str) -> str:
    # Session ids are UUIDs we generated; refuse anything else before it names a path.
    return str(uuid.UUID(session_id))


class DiskChunkWriter:
    """Hashes and writes one chunk to `incoming/` without copying its bytes.

    The body's pieces are kept as they came (views of the server's read buffers) until a
    block of `block_bytes` (WRITE_BLOCK_BYTES unless the caller asks for more) is
    gathered; a worker thread then hashes them and writes them with one writev. One block
    is in the thread while the next one gathers, so receiving and disk work overlap;
    memory per request stays at about two blocks.

    With `defer_bytes`, a chunk of at most that many bytes that is finished before any
    block went to the thread is hashed on the event loop and left unwritten: the staging
    keeps its bytes until the placement's move writes the temp file and renames it (the
    same temp file, then rename; nothing half-written is ever under `sessions/`).

    Such a writer, and one made with `send_late` (appends' pieces), sends a full block to
    the thread only when the next piece arrives, so a chunk or a piece that ends on a
    block's edge (every 1 MiB chunk, every 1 MiB PATCH) sends its last block with the
    close: one hand-off less, for at most one piece more held. Other writers send a block
    as soon as it is full: a stalled request's bytes reach the disk.
    """

    def __init__(
        self,
        staging: DiskStaging,
        *,
        max_bytes: int,
        block_bytes: int = WRITE_BLOCK_BYTES,
        defer_bytes: int = 0,
        send_late: bool = False,
    ) -> None:
        self._staging = staging
        self._max_bytes = max_bytes
        self._block_bytes = block_bytes
        self._defer_bytes = defer_bytes
        self._deferred = False
        self._send_late = send_late or defer_bytes > 0
        # 128 random bits, as a uuid4's hex, without building the UUID (~4x the cost).
        self._name = f"{os.urandom(16).hex()}.part"
        self._path = os.path.join(staging.incoming_path, self._name)  # no PurePath per writer
        self._fd = -1
        self._digest = hashlib.sha256()
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._in_flight: asyncio.Future[None] | None = None
        self._size_bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    async def write(self, data: bytes | memoryview) -> None:
        if self._size_bytes + len(data) > self._max_bytes:
            raise ChunkTooLarge(details={"max_chunk_size": self._max_bytes})
        self._staging.reserve(len(data), writer=self._name)
        self._size_bytes += len(data)
        if self._send_late and self._pending_bytes >= self._block_bytes:
            await self._send_block()  # more follows the full block: not the last one
        self._pending.append(data)
        self._pending_bytes += len(data)
        if not self._send_late and self._pending_bytes >= self._block_bytes:
            await self._send_block()

    async def _send_block(self) -> None:
        await self._wait_in_flight()
        block, self._pending, self._pending_bytes = self._pending, [], 0
        if block:
            loop = asyncio.get_running_loop()
            self._in_flight = loop.run_in_executor(None, self._write_block, block)

    async def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            # Shielded, and forgotten only once done: a cancelled request must not leave
            # the thread writing to a descriptor that `discard` closes (and the OS reuses).
            await asyncio.shield(self._in_flight)
            self._in_flight = None

    def _write_block(self, block: list[bytes | memoryview]) -> None:
        try:
            if self._fd < 0:
                self._fd = _create(self._path)
            for piece in block:
                self._digest.update(piece)
            _write_all(self._fd, block)
        except OSError as error:
            raise _translate(error) from error

    async def finish(self) -> StagedFile:
        if (
            self._defer_bytes
            and self._in_flight is None
            and self._fd < 0
            and self._pending_bytes <= self._defer_bytes
        ):
            return self._finish_unwritten()
        await self._wait_in_flight()
        # The last block and the close go to the thread together: one hand-off, not two
        # (a small chunk is all last block). Shielded like every block (discard waits).
        block, self._pending, self._pending_bytes = self._pending, [], 0
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(
            None, self._write_last_block, block, self._staging.fsync
        )
        await self._wait_in_flight()
        self._staging.writer_done(self._name)
        return StagedFile(
            file_name=self._name, size_bytes=self._size_bytes, sha256=self._digest.hexdigest()
        )

    def _finish_unwritten(self) -> StagedFile:
        block, self._pending, self._pending_bytes = self._pending, [], 0
        for piece in block:
            self._digest.update(piece)
        # Still counted as being written (its reservation) until the move writes it.
        self._staging.hold_unwritten(self._name, block, self._size_bytes)
        self._deferred = True
        return StagedFile(
            file_name=self._name, size_bytes=self._size_bytes, sha256=self._digest.hexdigest()
        )

    def _write_last_block(self, block: list[bytes | memoryview], fsync: bool) -> None:
        if block:
            self._write_block(block)  # on failure the descriptor stays for `discard`
        self._close(fsync)

    def _close(self, fsync: bool) -> None:
        try:
            if self._fd < 0:  # an empty chunk
                self._fd = _create(self._path)
            if fsync:
                os.fsync(self._fd)
        except OSError as error:
            raise _translate(error) from error
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def discard(self) -> None:
        self._pending, self._pending_bytes = [], 0
        if self._deferred:
            # Nothing on disk: drop the held bytes (unless already written by a move, whose
            # file the caller removes as any temp file), no thread hand-off.
            self._staging.drop_unwritten(self._name)
            self._size_bytes = 0
            return
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and not in_flight.done():
            # The thread must be done with the descriptor before the file can go.
            try:
                await asyncio.shield(in_flight)
            except asyncio.CancelledError:
                in_flight.add_done_callback(self._discard_when_written)
                raise
            except Exception:  # noqa: BLE001, S110 - its error is moot: the chunk is dropped
                pass
        await asyncio.to_thread(self._discard)

    def _discard_when_written(self, written: asyncio.Future[None]) -> None:
        if not written.cancelled():
            written.exception()  # retrieved: the chunk is dropped either way
        self._discard()

    def _discard(self) -> None:
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._staging.release(self._size_bytes)
        self._staging.writer_done(self._name)
        self._size_bytes = 0


def _create(path: str | Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        # The staging directory was wiped under a running process (a replaced volume, an
        # operator's clean-up): recreate it rather than fail every chunk from now on.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _write_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """os.writev until every byte is written (it may stop short, as write does)."""
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


@dataclass(frozen=True)
class StagingEntry:
    name: str
    size_bytes: int
    modified_at: datetime


class DiskStaging:
    def __init__(
        self, root: Path, *, fsync: bool = False, max_bytes: int = 0, min_free_bytes: int = 0
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        # Reserved since the last free-space probe, and how much may be before the next.
        self._unprobed_bytes = 0
        self._probe_budget = 0  # probe at the first reservation
        self.incoming_dir = root / "incoming"
        self.incoming_path = str(self.incoming_dir)
        self.sessions_dir = root / "sessions"
        self._used_bytes = 0
        # Incoming files still being written, and what their writers reserved so far: a
        # re-measure counts these by reservation, not by their size on disk at that moment.
        self._writing: dict[str, int] = {}
        # Small finished chunks not written yet (`DiskChunkWriter(defer_bytes=...)`): their
        # bytes and size, by temp file name, until their placement's move writes them.
        self._unwritten: dict[str, tuple[list[bytes | memoryview], int]] = {}
        # The counter moves on the event loop and in worker threads.
        self._lock = threading.Lock()

    def prepare(self) -> None:
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self._used_bytes = _tree_bytes(self.incoming_dir) + _tree_bytes(self.sessions_dir)

    # --- the staging cap ---------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    def reserve(self, size_bytes: int, *, writer: str | None = None) -> None:
        with self._lock:
            if self.max_bytes and self._used_bytes + size_bytes > self.max_bytes:
                raise StagingFull(details={"staging_max_bytes": self.max_bytes})
            if self.min_free_bytes:
                self._unprobed_bytes += size_bytes
                if self._unprobed_bytes > self._probe_budget:
                    self._keep_free_space(size_bytes)
                    self._unprobed_bytes = 0
            self._used_bytes += size_bytes
            if writer is not None:
                self._writing[writer] = self._writing.get(writer, 0) + size_bytes

    def _keep_free_space(self, size_bytes: int) -> None:
        try:
            found = os.statvfs(self.incoming_dir)
        except OSError:
            self._probe_budget = 0
            return  # the write itself will say what is wrong
        room = found.f_bavail * found.f_frsize - size_bytes - self.min_free_bytes
        self._probe_budget = min(max(room // 2, 0), FREE_SPACE_PROBE_BYTES)
        if room < 0:
            raise StagingFull(
                "The staging filesystem is full (its free-space reserve is kept).",
                details={"staging_min_free_bytes": self.min_free_bytes},
            )

    def release(self, size_bytes: int) -> None:
        with self._lock:
            self._used_bytes = max(0, self._used_bytes - size_bytes)

    def writer_done(self, writer: str) -> None:
        """The writer's file is complete or gone: from now on it counts as what it is."""
        with self._lock:
            self._writing.pop(writer, None)

    async def refresh_usage(self) -> int:
        """Re-measure the tree. Files still being written count by what their writers
        reserved (part of it may not be on disk yet); all else by its size on disk."""

        def measure() -> int:
            with self._lock:
                writing = set(self._writing)
            incoming = sum(
                e.size_bytes for e in _entries(self.incoming_dir) if e.name not in writing
            )
            return incoming + _tree_bytes(self.sessions_dir)

        measured = await asyncio.to_thread(measure)
        with self._lock:
            self._used_bytes = measured + sum(self._writing.values())
        return self._used_bytes

    # --- listings for the janitor ------------------------------------------------------
    async def list_incoming(self) -> list[StagingEntry]:
        """Temp files of this process's finished or dead writers; a file a live request is
        still writing is never listed, however slowly its chunk trickles in (its writer
        removes it itself if the request fails)."""
        with self._lock:
            writing = set(self._writing)
        entries = await asyncio.to_thread(_entries, self.incoming_dir)
        return [entry for entry in entries if entry.name not in writing]

    async def list_session_dirs(self) -> list[str]:
        """Session ids that have a directory (names that are not UUIDs are not ours)."""

        def scan() -> list[str]:
            found = []
            with os.scandir(self.sessions_dir) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            found.append(_session_dir_name(entry.name))
                    except ValueError:
                        continue
            return found

        return await asyncio.to_thread(scan)

    async def list_session_files(self, session_id: str) -> list[StagingEntry]:
        return await asyncio.to_thread(_entries, self.session_dir(session_id))

    async def remove_incoming(self, name: str) -> None:
        await asyncio.to_thread(self._unlink_counted, self.incoming_dir / Path(name).name)

    def _unlink_counted(self, path: Path) -> None:
        try:
            size_bytes = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self.release(size_bytes)

    def new_writer(
        self, *, max_bytes: int, block_bytes: int = WRITE_BLOCK_BYTES, send_late: bool = False
    ) -> DiskChunkWriter:
        return DiskChunkWriter(
            self, max_bytes=max_bytes, block_bytes=block_bytes, send_late=send_late
        )

    def new_placed_writer(
        self, *, max_bytes: int, block_bytes: int = WRITE_BLOCK_BYTES
    ) -> DiskChunkWriter:
        """A writer whose chunk goes to `placement` (or `adopt`, or `remove_temp`) and
        nowhere else: a small one is written by the placement's move (SMALL_CHUNK_BYTES)."""
        return DiskChunkWriter(
            self, max_bytes=max_bytes, block_bytes=block_bytes, defer_bytes=SMALL_CHUNK_BYTES
        )

    # --- small chunks written by their placement ---------------------------------------
    def hold_unwritten(self, name: str, pieces: list[bytes | memoryview], size_bytes: int) -> None:
        with self._lock:
            self._unwritten[name] = (pieces, size_bytes)

    def drop_unwritten(self, name: str) -> bool:
        """Forget a held chunk (it will not be placed); False if there is none (any more)."""
        with self._lock:
            held = self._unwritten.pop(name, None)
            if held is None:
                return False
            self._writing.pop(name, None)
            self._used_bytes = max(0, self._used_bytes - held[1])
        return True

    def held_write(self, staged: StagedFile) -> Callable[[], None] | None:
        name = Path(staged.file_name).name
        with self._lock:
            if name not in self._unwritten:
                return None
        return partial(self._write_unwritten, self.incoming_dir / name)

    def _write_unwritten(self, path: Path) -> None:
        """Blocking: write a held chunk's temp file (if it is one), as its writer would
        have. On failure nothing of it is left, on disk or counted."""
        with self._lock:
            held = self._unwritten.pop(path.name, None)
        if held is None:
            return
        pieces, size_bytes = held
        try:
            fd = _create(path)
            try:
                _write_all(fd, pieces)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            path.unlink(missing_ok=True)
            self.release(size_bytes)
            raise _translate(error) from error
        finally:
            self.writer_done(path.name)

    def session_dir(self, session_id: str) -> Path:
        return self.sessions_dir / _session_dir_name(session_id)

    async def adopt(self, session_id: str, staged: StagedFile, index: int) -> str:
        file_name, move = self.placement(session_id, staged, index)
        await asyncio.to_thread(move)
        return file_name

    def placement(self, session_id: str, staged: StagedFile, index: int) -> ChunkPlacement:
        """`adopt`'s name and its rename, unrun: the chunk path runs the rename in the
        hand-off of the chunk's record (one thread hand-off less per chunk)."""
        file_name = f"{index:06d}.{uuid.uuid4().hex}.chunk"
        target_dir = self.session_dir(session_id)
        source, target = self.incoming_dir / staged.file_name, target_dir / file_name

        def move() -> None:
            self._write_unwritten(source)  # a held small chunk, unless `held_write` ran
            try:
                os.replace(source, target)  # after its first chunk the directory exists: no mkdir
            except FileNotFoundError:
                target_dir.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)

        return file_name, move

    async def move_chunk(
        self, from_session_id: str, file_name: str, to_session_id: str, index: int
    ) -> str:
        new_name = f"{index:06d}.{uuid.uuid4().hex}.chunk"
        source = self.session_dir(from_session_id) / Path(file_name).name
        target_dir = self.session_dir(to_session_id)

        def move() -> None:
            target_dir.mkdir(parents=True, exist_ok=True)
            os.replace(source, target_dir / new_name)

        await asyncio.to_thread(move)
        return new_name

    async def remove_chunk(self, session_id: str, file_name: str) -> None:
        path = self.session_dir(session_id) / Path(file_name).name
        await asyncio.to_thread(self._unlink_counted, path)

    async def remove_temp(self, staged: StagedFile) -> None:
        if self.drop_unwritten(Path(staged.file_name).name):
            return  # never written: nothing on disk
        path = self.incoming_dir / Path(staged.file_name).name
        await asyncio.to_thread(self._unlink_counted, path)

    async def remove_session(self, session_id: str) -> None:
        directory = self.session_dir(session_id)

        def remove() -> None:
            size_bytes = _tree_bytes(directory)
            shutil.rmtree(directory, ignore_errors=True)
            self.release(size_bytes - _tree_bytes(directory))

        await asyncio.to_thread(remove)

    def open_assembled(self, session_id: str, chunks: Sequence[StoredChunk]) -> BinaryIO:
        directory = self.session_dir(session_id)
        parts = [(directory / chunk.file_name, chunk.size_bytes) for chunk in chunks]
        raw = ConcatenatedReader(parts, sha256s=[chunk.sha256 for chunk in chunks])
        return AssembledReader(raw, buffer_size=ASSEMBLED_BUFFER_BYTES)

    async def check(self) -> None:
        def probe() -> None:
            # Not prepare(): that re-measures the tree and resets the cap's counter
            # without regard to reservations in flight.
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
            self.sessions_dir.mkdir(parents=True, exist_ok=True)
            probe_path = self.incoming_dir / f".ready-{uuid.uuid4().hex}"
            probe_path.write_bytes(b"ok")
            probe_path.unlink()

        await asyncio.to_thread(probe)


PartT = TypeVar("PartT")


class PartsReader(io.RawIOBase, Generic[PartT]):
    """A seekable read-only view of sized parts one after another: the positioning
    shared by the disk and S3 staging readers; a subclass reads the bytes."""

    def __init__(self, parts: Sequence[tuple[PartT, int]]) -> None:
        self._parts = list(parts)
        self._starts: list[int] = []
        offset = 0
        for _, size in self._parts:
            self._starts.append(offset)
            offset += size
        self._length = offset
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def _part_at(self, position: int) -> int:
        low, high = 0, len(self._starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._starts[middle] <= position:
                low = middle
            else:
                high = middle - 1
        # Skip empty parts that start at the same offset.
        while self._parts[low][1] == 0 and low + 1 < len(self._parts):
            low += 1
        return low


class ConcatenatedReader(PartsReader[Path]):
    """A seekable read-only view of several files one after another. With `sha256s` (the
    hex SHA-256 the chunk writer computed for each file's bytes), a range that is exactly
    one whole file knows its SHA-256 without reading it (`StagedRange.payload_sha256`)."""

    def __init__(
        self, parts: Sequence[tuple[Path, int]], *, sha256s: Sequence[str] | None = None
    ) -> None:
        super().__init__(parts)
        self._sha256s = list(sha256s) if sha256s is not None else None
        self._open_index = -1
        self._fd = -1

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._position >= self._length or len(buffer) == 0:
            return 0
        index = self._part_at(self._position)
        path, size = self._parts[index]
        within = self._position - self._starts[index]
        wanted = min(len(buffer), size - within)
        if self._open_index != index:
            self._close_fd()
            self._fd = os.open(path, os.O_RDONLY)
            self._open_index = index
        got = os.preadv(self._fd, [memoryview(buffer)[:wanted]], within)
        if got != wanted:
            raise OSError(errno.EIO, f"staged chunk {index} is shorter than recorded")
        self._position += got
        return got

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._open_index = -1

    def close(self) -> None:
        self._close_fd()
        super().close()

    def staged_range(self, start: int, size_bytes: int) -> StagedRange:
        """Bytes [start, start + size_bytes) (fewer only at the end), to be sent from the
        files as they are (blocking: it checks each file's size)."""
        end = min(self._length, start + max(0, size_bytes))
        segments: list[_Segment] = []
        position = start
        while position < end:
            index = self._part_at(position)
            path, size = self._parts[index]
            within = position - self._starts[index]
            length = min(size - within, end - position)
            fd = os.open(path, os.O_RDONLY)
            try:
                found = os.fstat(fd)
            finally:
                os.close(fd)
            if found.st_size < within + length:
                raise OSError(errno.EIO, f"staged chunk {index} is shorter than recorded")
            segments.append(_Segment(path, within, length, _identity(found)))
            position += length
        known: str | None = None
        if len(segments) == 1 and self._sha256s is not None:
            index = self._part_at(start)
            whole = segments[0]
            if whole.offset == 0 and whole.size_bytes == self._parts[index][1] == whole.identity[2]:
                # The whole of one chunk (a part the size of the client's chunks): the
                # writer's own hash of exactly these bytes, checked by the identity above.
                known = self._sha256s[index]
        return StagedRange(segments, payload_sha256=known)


class AssembledReader(io.BufferedReader):
    """`DiskStaging.open_assembled`'s stream: buffered reads, and parts cut from it to be
    sent without reading them into memory (app.uploads.ports.RangedStream)."""

    def __init__(self, raw: ConcatenatedReader, buffer_size: int) -> None:
        super().__init__(raw, buffer_size=buffer_size)
        self._concatenated = raw

    def staged_range(self, start: int, size_bytes: int) -> StagedRange:
        return self._concatenated.staged_range(start, size_bytes)


# Hashing a range reads it in blocks of this size into one buffer per call.
HASH_BLOCK_BYTES = 256 * 1024
# The read buffer of an assembled stream, allocated when it is opened. Its reads are the
# audio check's (small ones served from the buffer) and whole blocks (which bypass it);
# parts go out through `staged_range`. Eager flush keeps a stream open per session while
# its parts wait for a slot: at 32 sessions, 256 KiB each was 8 MiB (tracemalloc, bench
# RSS burst).
ASSEMBLED_BUFFER_BYTES = 64 * 1024


class _Segment(NamedTuple):
    path: Path
    offset: int  # within the file
    size_bytes: int
    identity: tuple[int, int, int, int]  # device, inode, size, mtime: the file cut from


def _identity(found: os.stat_result) -> tuple[int, int, int, int]:
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class StagedRange:
    """Bytes of staged chunk files sent as one multipart part straight from the files
    (app.uploads.ports.PartBody): a part in flight holds one 256 KiB read, not 8 MiB.

    Safe to retry by construction: the range itself is never read. `hash_into` and each
    send attempt (`open_reader`) read through descriptors and positions of their own, so
    an attempt cut off while a worker thread still reads for it cannot move what the
    retry reads. All of them read the same bytes: a staged chunk file is never written
    again once in place (a re-sent chunk gets a file of its own), and every opening checks
    that the file is still the one the range was cut from (device, inode, size, mtime),
    failing otherwise (a failed part is sent again later, never wrong).

    `payload_sha256`, when known, is the range's own SHA-256 (hex): SigV4 over plain http
    signs it (app.storage.s3), which otherwise costs botocore one more read and hash of
    the part on the event loop. Known from the start for a range that is one whole chunk
    file (its writer hashed exactly those bytes), else computed by `hash_into(...,
    payload_sha256=True)` in the same pass as the file's hash."""

    def __init__(self, segments: Sequence[_Segment], *, payload_sha256: str | None = None) -> None:
        self._segments = tuple(segments)
        self.size_bytes = sum(segment.size_bytes for segment in self._segments)
        self.payload_sha256 = payload_sha256
        self._readers: list[RangeReader] = []
        self._closed = False

    def read(self, size: int = -1) -> bytes:
        """Present so that botocore takes the range for a file-like body; never works."""
        raise io.UnsupportedOperation("a staged range is read through open_reader()")

    def hash_into(self, hasher: _Hasher, *, payload_sha256: bool = False) -> None:
        """Feed the range's bytes to `hasher`; with `payload_sha256`, also hash them on
        their own (from the same reads) unless that is known already."""
        own = hashlib.sha256() if payload_sha256 and self.payload_sha256 is None else None
        buffer = bytearray(min(HASH_BLOCK_BYTES, max(1, self.size_bytes)))
        view = memoryview(buffer)
        for segment in self._segments:
            fd = _open_segment(segment)
            try:
                done = 0
                while done < segment.size_bytes:
                    wanted = min(len(buffer), segment.size_bytes - done)
                    got = os.preadv(fd, [view[:wanted]], segment.offset + done)
                    if got <= 0:
                        raise OSError(errno.EIO, f"{segment.path.name} ended early")
                    hasher.update(view[:got])
                    if own is not None:
                        own.update(view[:got])
                    done += got
            finally:
                os.close(fd)
        if own is not None:
            self.payload_sha256 = own.hexdigest()

    def intact(self) -> bool:
        for segment in self._segments:
            try:
                if _identity(os.stat(segment.path)) != segment.identity:
                    return False
            except FileNotFoundError:
                return False
        return True

    def open_reader(self) -> RangeReader:
        if self._closed:
            raise ValueError("the staged range is closed")
        reader = RangeReader(self._segments, payload_sha256=self.payload_sha256)
        self._readers.append(reader)
        return reader

    def close(self) -> None:
        self._closed = True
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()


class _Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


def _open_segment(segment: _Segment) -> int:
    fd = os.open(segment.path, os.O_RDONLY)
    try:
        if _identity(os.fstat(fd)) != segment.identity:
            raise OSError(errno.ESTALE, f"{segment.path.name} changed since it was hashed")
    except BaseException:
        os.close(fd)
        raise
    return fd


class RangeReader(io.RawIOBase):
    """One send attempt's reader over a StagedRange: seekable (botocore measures the
    body and rewinds it after SigV4's hash), positional reads (os.pread) from one file
    descriptor at a time. A lock makes `close` wait for a read in flight, so a worker
    thread still reading for an abandoned attempt never reads a reused descriptor.
    `payload_sha256`: its range's, when known (the S3 signer reads it from the body)."""

    def __init__(self, segments: Sequence[_Segment], *, payload_sha256: str | None = None) -> None:
        self._segments = segments
        self.payload_sha256 = payload_sha256
        self._starts: list[int] = []
        offset = 0
        for segment in segments:
            self._starts.append(offset)
            offset += segment.size_bytes
        self._length = offset
        self._position = 0
        self._fd = -1
        self._fd_index = -1
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
            self._position = max(0, base + offset)
            return self._position

    def read(self, size: int | None = -1) -> bytes:
        # Straight into the bytes returned (RawIOBase.read would copy once more): short
        # reads at a file boundary, as a raw read may be; a read of everything does not.
        if size is None or size < 0:
            return self.readall()
        with self._lock:
            located = self._locate(size)
            if located is None:
                return b""
            fd, within, wanted = located
            data = os.pread(fd, wanted, within)
            return self._advance(data, wanted)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        with self._lock:
            located = self._locate(len(buffer))
            if located is None:
                return 0
            fd, within, wanted = located
            got = os.preadv(fd, [memoryview(buffer).cast("B")[:wanted]], within)
            self._advance(b"", wanted, got)
            return got

    def readall(self) -> bytes:
        pieces = []
        while piece := self.read(max(1, self._length - self._position)):
            pieces.append(piece)
        return b"".join(pieces)

    def _locate(self, size: int | None) -> tuple[int, int, int] | None:
        if self.closed:
            raise ValueError("read of a closed range reader")
        if self._position >= self._length or size == 0:
            return None
        index = 0
        while self._starts[index] + self._segments[index].size_bytes <= self._position:
            index += 1
        segment = self._segments[index]
        within = self._position - self._starts[index]
        wanted = segment.size_bytes - within
        if size is not None and size > 0:
            wanted = min(wanted, size)
        if self._fd_index != index:
            self._close_fd()
            self._fd = _open_segment(segment)
            self._fd_index = index
        return self._fd, segment.offset + within, wanted

    def _advance(self, data: bytes, wanted: int, got: int | None = None) -> bytes:
        got = len(data) if got is None else got
        if got != wanted:
            raise OSError(errno.EIO, "a staged chunk ended early")
        self._position += got
        return data

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._fd_index = -1

    def close(self) -> None:
        with self._lock:
            self._close_fd()
            super().close()


def _tree_bytes(directory: Path) -> int:
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        total += _tree_bytes(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return 0
    return total


def _entries(directory: Path) -> list[StagingEntry]:
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                modified_at = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(StagingEntry(entry.name, stat.st_size, modified_at))
    except FileNotFoundError:
        return []
    return found


def _translate(error: OSError) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StagingFull()
    return error
