"""The service's request path without its byte work: the real app (JWT, the multipart
parser, the session check, the chunk's database transaction and rename, metrics,
logging) with a chunk writer that only counts the bytes and leaves an empty staged
file: no SHA-256, no disk write. Its MB/s, beside the service's in the same run, is what
hashing and staging cost, and the ceiling any work on them could reach."""

from __future__ import annotations

from app.main import create_app
from app.storage.staging import WRITE_BLOCK_BYTES, DiskChunkWriter, DiskStaging


class CountingChunkWriter(DiskChunkWriter):
    async def write(self, data: bytes | memoryview) -> None:
        self._size_bytes += len(data)


def _counting_writer(
    self: DiskStaging,
    *,
    max_bytes: int,
    block_bytes: int = WRITE_BLOCK_BYTES,
    send_late: bool = False,
) -> DiskChunkWriter:
    # send_late: tus and IETF appends ask for it (they failed here without it).
    return CountingChunkWriter(
        self, max_bytes=max_bytes, block_bytes=block_bytes, send_late=send_late
    )


DiskStaging.new_writer = _counting_writer  # type: ignore[method-assign]
# The chunk route's writer (its small chunks written by their placement): counting too.
DiskStaging.new_placed_writer = _counting_writer  # type: ignore[method-assign]
app = create_app()
