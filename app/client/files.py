"""Reading the file to upload: the whole-file SHA-256 in one streaming pass, and one
chunk at a time read from disk when it is sent (memory stays at chunk size times parallel)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE_BYTES = 8 * MiB
# The service's default MAX_CHUNKS: files that would need more chunks get bigger ones.
DEFAULT_MAX_CHUNKS = 10_000
READ_BLOCK_BYTES = 1 * MiB


def file_sha256(path: Path, on_read: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(READ_BLOCK_BYTES):
            digest.update(block)
            if on_read is not None:
                on_read(len(block))
    return digest.hexdigest()


def read_chunk(path: Path, index: int, chunk_size_bytes: int) -> bytes:
    with path.open("rb") as source:
        source.seek(index * chunk_size_bytes)
        return source.read(chunk_size_bytes)


def chunk_count(size_bytes: int, chunk_size_bytes: int) -> int:
    # An empty file is still one (empty) chunk, so the service can answer for it.
    return max(1, math.ceil(size_bytes / chunk_size_bytes))


def choose_chunk_size(
    size_bytes: int, requested_bytes: int | None, max_chunks: int = DEFAULT_MAX_CHUNKS
) -> int:
    """The requested size as given; otherwise the default, grown so the file fits in
    `max_chunks` chunks (rounded up to a whole MiB)."""
    if requested_bytes is not None:
        return requested_bytes
    needed = math.ceil(size_bytes / max_chunks)
    if needed <= DEFAULT_CHUNK_SIZE_BYTES:
        return DEFAULT_CHUNK_SIZE_BYTES
    return math.ceil(needed / MiB) * MiB
