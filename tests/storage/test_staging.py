"""The chunk writer on a real directory: bytes and hash exact whatever the piece sizes,
nothing left behind when a write is discarded or refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from app.errors import ChunkTooLarge, StagingFull
from app.storage.staging import SMALL_CHUNK_BYTES, WRITE_BLOCK_BYTES, DiskStaging


@pytest.fixture
def staging(tmp_path: Path) -> DiskStaging:
    staging = DiskStaging(tmp_path / "staging")
    staging.prepare()
    return staging


def pieces_of(data: bytes, sizes: list[int]) -> list[memoryview]:
    view, out, at = memoryview(data), [], 0
    for size in sizes:
        out.append(view[at : at + size])
        at += size
    out.append(view[at:])
    return out


@pytest.mark.parametrize(
    "sizes",
    [
        [],  # one piece
        [1, 2, 3, 65536, 1],  # small pieces, then the rest in one
        [WRITE_BLOCK_BYTES - 1, 2, WRITE_BLOCK_BYTES, 7],  # pieces around the block edge
        [65536] * 80,  # many blocks' worth in server-sized pieces
    ],
)
async def test_written_file_and_hash_equal_the_pieces(
    staging: DiskStaging, sizes: list[int]
) -> None:
    data = os.urandom(5 * WRITE_BLOCK_BYTES + 12345)
    writer = staging.new_writer(max_bytes=len(data))
    for piece in pieces_of(data, sizes):
        await writer.write(piece)
    staged = await writer.finish()

    written = (staging.incoming_dir / staged.file_name).read_bytes()
    assert written == data
    assert staged.size_bytes == len(data)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staging.used_bytes == len(data)


async def test_an_empty_chunk_is_an_empty_file(staging: DiskStaging) -> None:
    staged = await staging.new_writer(max_bytes=10).finish()
    assert (staging.incoming_dir / staged.file_name).read_bytes() == b""
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()


async def test_discard_with_a_block_in_flight_leaves_nothing(staging: DiskStaging) -> None:
    writer = staging.new_writer(max_bytes=10 * WRITE_BLOCK_BYTES)
    # Two blocks: the first is in the worker thread when the second is gathered.
    await writer.write(bytes(WRITE_BLOCK_BYTES))
    await writer.write(bytes(WRITE_BLOCK_BYTES))
    await writer.discard()

    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == 0


async def test_a_chunk_over_the_limit_is_refused_and_discarded(staging: DiskStaging) -> None:
    writer = staging.new_writer(max_bytes=WRITE_BLOCK_BYTES + 10)
    await writer.write(bytes(WRITE_BLOCK_BYTES))
    with pytest.raises(ChunkTooLarge):
        await writer.write(bytes(11))
    await writer.discard()

    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == 0


async def test_re_measuring_during_a_write_counts_its_bytes_once(staging: DiskStaging) -> None:
    writer = staging.new_writer(max_bytes=10 * WRITE_BLOCK_BYTES)
    for _ in range(3):  # some of it on disk, some still gathering
        await writer.write(bytes(WRITE_BLOCK_BYTES))
    await writer.write(bytes(100))
    reserved = 3 * WRITE_BLOCK_BYTES + 100

    assert await staging.refresh_usage() == reserved
    staged = await writer.finish()
    assert staging.used_bytes == reserved
    assert await staging.refresh_usage() == reserved

    await staging.remove_temp(staged)
    assert staging.used_bytes == 0
    assert await staging.refresh_usage() == 0


async def test_a_request_cancelled_mid_block_leaves_nothing(staging: DiskStaging) -> None:
    writer = staging.new_writer(max_bytes=64 * WRITE_BLOCK_BYTES)
    big = bytes(16 * WRITE_BLOCK_BYTES)  # hashing it keeps the thread busy a while
    await writer.write(big)  # in the thread now
    waiting = asyncio.create_task(writer.write(big))  # waits for the first block
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await writer.discard()

    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == 0


async def test_a_late_sending_writer_sends_a_body_ending_on_a_block_edge_with_the_close(
    staging: DiskStaging,
) -> None:
    # An append's writer: its full block waits for more bytes, so a body of exactly one
    # block reaches the thread once, with the close. Other writers send it at once (a
    # stalled request's bytes reach the disk).
    block = 4 * WRITE_BLOCK_BYTES
    data = os.urandom(block)
    late = staging.new_writer(max_bytes=block, block_bytes=block, send_late=True)
    for piece in pieces_of(data, [WRITE_BLOCK_BYTES] * 3):
        await late.write(piece)
    assert list(staging.incoming_dir.iterdir()) == []  # all still gathered
    staged = await late.finish()
    assert (staging.incoming_dir / staged.file_name).read_bytes() == data
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    eager = staging.new_writer(max_bytes=block, block_bytes=WRITE_BLOCK_BYTES)
    await eager.write(data[:WRITE_BLOCK_BYTES])  # full: in the thread at once
    await eager.write(data[WRITE_BLOCK_BYTES : 2 * WRITE_BLOCK_BYTES])  # waits for it
    assert len(list(staging.incoming_dir.iterdir())) == 2
    await eager.discard()


async def test_the_readiness_probe_leaves_the_cap_counter_alone(staging: DiskStaging) -> None:
    # It used to re-measure the tree without the lock, dropping in-flight reservations.
    writer = staging.new_writer(max_bytes=10 * WRITE_BLOCK_BYTES)
    await writer.write(bytes(WRITE_BLOCK_BYTES))
    await writer.write(bytes(100))  # still gathering: not on disk yet
    reserved = WRITE_BLOCK_BYTES + 100
    for _ in range(3):
        await staging.check()
    assert staging.used_bytes == reserved
    await writer.discard()
    assert staging.used_bytes == 0


async def test_a_write_that_would_eat_the_free_space_reserve_is_refused(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    staging = DiskStaging(tmp_path / "staging", min_free_bytes=free + 1)
    staging.prepare()
    writer = staging.new_writer(max_bytes=WRITE_BLOCK_BYTES)
    with pytest.raises(StagingFull) as refused:
        await writer.write(bytes(100))
    assert refused.value.details == {"staging_min_free_bytes": free + 1}
    await writer.discard()
    assert staging.used_bytes == 0
    roomy = DiskStaging(tmp_path / "roomy", min_free_bytes=1)
    roomy.prepare()
    writer = roomy.new_writer(max_bytes=WRITE_BLOCK_BYTES)
    await writer.write(bytes(100))
    await writer.discard()


async def test_the_free_space_reserve_holds_between_probes(tmp_path: Path) -> None:
    # Free space is probed again only once half of the room the last probe left has been
    # reserved: a stream of writes is still refused before it passes the reserve by more
    # than what a probe cannot see (the writer's bytes not on disk yet: the block in the
    # thread, the block gathering, a piece). Probed every 1 MiB, as before, it went ~1 MiB
    # further.
    found = os.statvfs(tmp_path)
    room = 8 * WRITE_BLOCK_BYTES
    piece = WRITE_BLOCK_BYTES // 4
    staging = DiskStaging(
        tmp_path / "staging", min_free_bytes=found.f_bavail * found.f_frsize - room
    )
    staging.prepare()
    writer = staging.new_writer(max_bytes=64 * WRITE_BLOCK_BYTES)

    async def fill() -> None:
        for _ in range(256):
            await writer.write(bytes(piece))

    with pytest.raises(StagingFull):
        await fill()
    assert writer.size_bytes <= room + 2 * WRITE_BLOCK_BYTES + piece
    await writer.discard()
    assert staging.used_bytes == 0


async def test_a_small_placed_chunk_is_written_by_its_record_hand_off(
    staging: DiskStaging,
) -> None:
    """`new_placed_writer` leaves a small chunk unwritten (its writer makes no thread
    hand-off); `held_write` writes the temp file, the move renames it. Counted throughout,
    never listed as a stray temp file."""
    data = os.urandom(1000)
    writer = staging.new_placed_writer(max_bytes=SMALL_CHUNK_BYTES)
    for piece in pieces_of(data, [1, 300]):
        await writer.write(piece)
    staged = await writer.finish()
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged.size_bytes == len(data)
    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == len(data)
    assert await staging.list_incoming() == []
    assert await staging.refresh_usage() == len(data)  # by its reservation

    write = staging.held_write(staged)
    assert write is not None
    await asyncio.to_thread(write)
    assert (staging.incoming_dir / staged.file_name).read_bytes() == data
    assert staging.held_write(staged) is None  # written once
    file_name, move = staging.placement("8d1c5b9e-4bde-4f7a-9a53-8c8f7c1a0f11", staged, 3)
    await asyncio.to_thread(move)
    placed = staging.session_dir("8d1c5b9e-4bde-4f7a-9a53-8c8f7c1a0f11") / file_name
    assert placed.read_bytes() == data
    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == len(data)
    assert await staging.refresh_usage() == len(data)  # by its size on disk


async def test_adopting_a_held_chunk_writes_it(staging: DiskStaging) -> None:
    writer = staging.new_placed_writer(max_bytes=SMALL_CHUNK_BYTES)
    await writer.write(b"")
    staged = await writer.finish()  # an empty chunk is an empty file here too
    file_name = await staging.adopt("8d1c5b9e-4bde-4f7a-9a53-8c8f7c1a0f11", staged, 0)
    placed = staging.session_dir("8d1c5b9e-4bde-4f7a-9a53-8c8f7c1a0f11") / file_name
    assert placed.read_bytes() == b""
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("drop", ["remove_temp", "discard"])
async def test_a_dropped_held_chunk_leaves_nothing(staging: DiskStaging, drop: str) -> None:
    writer = staging.new_placed_writer(max_bytes=SMALL_CHUNK_BYTES)
    await writer.write(os.urandom(SMALL_CHUNK_BYTES))  # the largest held whole
    staged = await writer.finish()
    assert list(staging.incoming_dir.iterdir()) == []
    assert staging.used_bytes == SMALL_CHUNK_BYTES
    if drop == "remove_temp":
        await staging.remove_temp(staged)
    else:
        await writer.discard()
    assert staging.held_write(staged) is None
    assert staging.used_bytes == 0
    assert await staging.refresh_usage() == 0
    assert list(staging.incoming_dir.iterdir()) == []


async def test_a_placed_chunk_over_the_small_size_is_written_by_its_writer(
    staging: DiskStaging,
) -> None:
    data = os.urandom(SMALL_CHUNK_BYTES + 1)
    writer = staging.new_placed_writer(max_bytes=len(data))
    await writer.write(data)
    staged = await writer.finish()
    assert staging.held_write(staged) is None
    assert (staging.incoming_dir / staged.file_name).read_bytes() == data


async def test_a_placed_chunk_ending_on_a_block_edge_sends_its_last_block_with_the_close(
    staging: DiskStaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(4 * WRITE_BLOCK_BYTES)
    writer = staging.new_placed_writer(max_bytes=len(data))
    loop = asyncio.get_running_loop()
    hand_offs = 0
    run_in_executor = loop.run_in_executor

    def counted(*args: Any) -> Any:
        nonlocal hand_offs
        hand_offs += 1
        return run_in_executor(*args)

    monkeypatch.setattr(loop, "run_in_executor", counted)
    for piece in pieces_of(data, [65536] * 15):  # sixteen server-sized pieces
        await writer.write(piece)
    staged = await writer.finish()
    assert hand_offs == 4  # three blocks, then the fourth with the close
    assert (staging.incoming_dir / staged.file_name).read_bytes() == data
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
