"""Chunks staged as S3 objects (`STAGING_BACKEND=s3`): replicas share nothing but the
database and the bucket, and a replaced node loses nothing it acknowledged.

Layout in the staging bucket (`S3_STAGING_BUCKET`, by default the upload bucket):
  <S3_STAGING_PREFIX><session id>/<index>.<random>.chunk     a received chunk
The prefix lies outside `S3_KEY_PREFIX`, so a bucket lifecycle rule can expire it as a
second line of defence (README, "Replicas").

A chunk is received exactly as with disk staging (streamed to a temp file under
`LOCAL_TEMP_CHUNK_PATH/incoming/`, hashed as it goes, size-capped), then `adopt` puts it
to S3 and removes the temp file; the request is acknowledged only after that PutObject,
so an acknowledged chunk is durable in S3. Local disk holds only chunks in flight.
Every staged object has its own random name, so a re-sent chunk never overwrites an
object a completion may be reading.

`open_assembled` reads the chunks back with ranged GETs, in windows of at least
READ_WINDOW_BYTES (the audio check's small head/tail reads cost one GET each, a part's
read one GET per chunk it spans). It is blocking, like the disk reader, and runs in
worker threads: each GET is handed to the event loop the staging was opened on.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any, BinaryIO

from app.storage.s3 import S3MultipartStore
from app.storage.staging import (
    WRITE_BLOCK_BYTES,
    DiskChunkWriter,
    DiskStaging,
    PartsReader,
    StagingEntry,
    _session_dir_name,
)
from app.uploads.models import StagedFile, StoredChunk

READ_WINDOW_BYTES = 1024 * 1024
# DeleteObjects takes at most this many keys per call.
_DELETE_BATCH = 1000


class S3Staging:
    def __init__(
        self,
        objects: S3MultipartStore,
        local: DiskStaging,
        *,
        bucket: str,
        prefix: str,
    ) -> None:
        self.objects = objects
        self.local = local
        self.bucket = bucket
        self.prefix = prefix
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the same local parts as disk staging: temp files of chunks in flight ----------
    @property
    def incoming_dir(self) -> Any:
        return self.local.incoming_dir

    @property
    def sessions_dir(self) -> Any:
        return self.local.sessions_dir

    def prepare(self) -> None:
        self.local.prepare()

    async def open(self) -> None:
        """Remember the event loop the blocking readers hand their GETs to."""
        self._loop = asyncio.get_running_loop()

    def new_writer(
        self, *, max_bytes: int, block_bytes: int = WRITE_BLOCK_BYTES, send_late: bool = False
    ) -> DiskChunkWriter:
        return self.local.new_writer(
            max_bytes=max_bytes, block_bytes=block_bytes, send_late=send_late
        )

    async def remove_temp(self, staged: StagedFile) -> None:
        await self.local.remove_temp(staged)

    async def refresh_usage(self) -> int:
        return await self.local.refresh_usage()

    async def list_incoming(self) -> list[StagingEntry]:
        return await self.local.list_incoming()

    async def remove_incoming(self, name: str) -> None:
        await self.local.remove_incoming(name)

    # --- staged chunks in S3 -----------------------------------------------------------
    def session_prefix(self, session_id: str) -> str:
        return f"{self.prefix}{_session_dir_name(session_id)}/"

    def chunk_key(self, session_id: str, file_name: str) -> str:
        return self.session_prefix(session_id) + file_name.rsplit("/", 1)[-1]

    async def adopt(self, session_id: str, staged: StagedFile, index: int) -> str:
        file_name = f"{index:06d}.{uuid.uuid4().hex}.chunk"
        path = self.local.incoming_dir / staged.file_name
        body = await asyncio.to_thread(path.open, "rb")
        try:
            await self.objects.call(
                "put_object",
                Bucket=self.bucket,
                Key=self.chunk_key(session_id, file_name),
                Body=body,
                ContentLength=staged.size_bytes,
            )
        finally:
            await asyncio.to_thread(body.close)
        # Durable in S3 now: the local copy was only the bytes in flight.
        await self.local.remove_temp(staged)
        return file_name

    async def move_chunk(
        self, from_session_id: str, file_name: str, to_session_id: str, index: int
    ) -> str:
        # S3 has no rename: a server-side copy (chunks are far below its 5 GB copy limit),
        # then the source goes. A crash between the two leaves a staged object of the
        # source session, which the janitor removes with it.
        new_name = f"{index:06d}.{uuid.uuid4().hex}.chunk"
        source_key = self.chunk_key(from_session_id, file_name)
        await self.objects.call(
            "copy_object",
            Bucket=self.bucket,
            Key=self.chunk_key(to_session_id, new_name),
            CopySource={"Bucket": self.bucket, "Key": source_key},
        )
        await self.objects.call("delete_object", Bucket=self.bucket, Key=source_key)
        return new_name

    async def remove_chunk(self, session_id: str, file_name: str) -> None:
        await self.objects.call(
            "delete_object", Bucket=self.bucket, Key=self.chunk_key(session_id, file_name)
        )

    async def remove_session(self, session_id: str) -> None:
        entries = await self.list_session_files(session_id)
        keys = [self.chunk_key(session_id, entry.name) for entry in entries]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            await self.objects.call(
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

    async def list_session_dirs(self) -> list[str]:
        """Session ids that have staged objects (prefixes that are not UUIDs are not ours)."""
        found: list[str] = []
        token: dict[str, str] = {}
        while True:
            response = await self.objects.call(
                "list_objects_v2", Bucket=self.bucket, Prefix=self.prefix, Delimiter="/", **token
            )
            for common in response.get("CommonPrefixes", []):
                name = str(common["Prefix"])[len(self.prefix) :].rstrip("/")
                try:
                    found.append(_session_dir_name(name))
                except ValueError:
                    continue
            if not response.get("IsTruncated"):
                return found
            token = {"ContinuationToken": str(response["NextContinuationToken"])}

    async def list_session_files(self, session_id: str) -> list[StagingEntry]:
        prefix = self.session_prefix(session_id)
        found: list[StagingEntry] = []
        token: dict[str, str] = {}
        while True:
            response = await self.objects.call(
                "list_objects_v2", Bucket=self.bucket, Prefix=prefix, **token
            )
            for item in response.get("Contents", []):
                modified = item["LastModified"]
                if modified.tzinfo is None:
                    modified = modified.replace(tzinfo=UTC)
                found.append(
                    StagingEntry(
                        str(item["Key"])[len(prefix) :],
                        int(item["Size"]),
                        modified.astimezone(UTC),
                    )
                )
            if not response.get("IsTruncated"):
                return found
            token = {"ContinuationToken": str(response["NextContinuationToken"])}

    def open_assembled(self, session_id: str, chunks: Sequence[StoredChunk]) -> BinaryIO:
        if self._loop is None:
            raise RuntimeError("S3Staging.open() was not awaited")
        parts = [(self.chunk_key(session_id, c.file_name), c.size_bytes) for c in chunks]
        reader = S3ConcatenatedReader(self, parts, self._loop)
        return io.BufferedReader(reader, buffer_size=256 * 1024)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a staged object."""
        response = await self.objects.call(
            "get_object", Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
        )
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def check(self) -> None:
        await self.local.check()
        await self.objects.call("head_bucket", Bucket=self.bucket)


class S3ConcatenatedReader(PartsReader[str]):
    """A seekable read-only view of staged objects one after another (blocking)."""

    def __init__(
        self,
        staging: S3Staging,
        parts: Sequence[tuple[str, int]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(parts)
        self._staging = staging
        self._loop = loop
        # The last window read: (part index, start within the part, bytes).
        self._window: tuple[int, int, bytes] | None = None
        self.bytes_fetched = 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._position >= self._length or len(buffer) == 0:
            return 0
        index = self._part_at(self._position)
        key, size = self._parts[index]
        within = self._position - self._starts[index]
        wanted = min(len(buffer), size - within)
        target = memoryview(buffer).cast("B")
        window = self._window
        if window is not None and window[0] == index and window[1] <= within:
            cached = window[2][within - window[1] : within - window[1] + wanted]
            if cached:
                target[: len(cached)] = cached
                self._position += len(cached)
                return len(cached)
        if wanted >= READ_WINDOW_BYTES:
            data = self._fetch(key, within, within + wanted)
        else:
            data = self._fetch(key, within, min(size, within + READ_WINDOW_BYTES))
            self._window = (index, within, data)
        if len(data) < wanted:
            raise OSError(f"staged chunk {index} is shorter than recorded")
        target[:wanted] = data[:wanted]
        self._position += wanted
        return wanted

    def _fetch(self, key: str, start: int, end: int) -> bytes:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            # Blocking on the loop from its own thread would never return.
            raise RuntimeError("S3 staged reads must run in a worker thread")
        future = asyncio.run_coroutine_threadsafe(
            self._staging.get_range(key, start, end), self._loop
        )
        data = future.result()
        self.bytes_fetched += len(data)
        return data
