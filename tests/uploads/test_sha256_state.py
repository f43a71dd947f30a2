"""The resumable SHA-256 (app.uploads.sha256_state) against hashlib: states saved at a
block boundary and restored give the same digests; mid-block saving is refused; without
libcrypto it falls back to hashlib and says it cannot save."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest

from app.uploads import sha256_state
from app.uploads.eager import CoveredChunk, FlushedPart, HashCheckpoint, PlannedPart, PrefixDigest

MiB = 1024 * 1024


@pytest.fixture
def without_libcrypto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    sha256_state._library.cache_clear()
    monkeypatch.setattr(sha256_state, "_candidates", lambda: ["/nonexistent/libcrypto.so.3"])
    yield
    sha256_state._library.cache_clear()


def test_libcrypto_is_found_here() -> None:
    # The image and CI machines have it (the library _hashlib links to): the fast path.
    assert sha256_state.available()
    assert sha256_state.new().serialisable


@pytest.mark.parametrize("seed", range(4))
def test_saved_and_restored_at_random_block_boundaries_matches_hashlib(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 3 * MiB))
    cuts = sorted({rng.randrange(0, len(data) // 64 + 1) * 64 for _ in range(5)})
    hasher = sha256_state.new()
    position = 0
    for cut in cuts:
        hasher.update(data[position:cut])
        position = cut
        saved = hasher.export()
        assert len(saved) == sha256_state.SAVED_STATE_BYTES
        restored = sha256_state.restore(saved)
        assert restored is not None
        assert restored.size_bytes == cut
        # A restored state goes on exactly like the live one.
        assert restored.hexdigest() == hashlib.sha256(data[:cut]).hexdigest()
        hasher = restored
    hasher.update(data[position:])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_odd_split_points_and_buffer_kinds_match_hashlib() -> None:
    data = random.Random(7).randbytes(MiB + 12345)
    for split in (0, 1, 63, 64, 65, 4095, MiB, len(data)):
        hasher = sha256_state.new()
        hasher.update(memoryview(data)[:split])  # read-only, not bytes
        hasher.update(bytearray(data[split:]))  # writable
        assert hasher.digest() == hashlib.sha256(data).digest(), split
        assert hasher.size_bytes == len(data)


def test_copy_and_digest_leave_the_original_going_on() -> None:
    hasher = sha256_state.new()
    hasher.update(b"a" * 128)
    fork = hasher.copy()
    fork.update(b"b")
    assert hasher.hexdigest() == hashlib.sha256(b"a" * 128).hexdigest()
    hasher.update(b"c")
    assert hasher.hexdigest() == hashlib.sha256(b"a" * 128 + b"c").hexdigest()
    assert fork.hexdigest() == hashlib.sha256(b"a" * 128 + b"b").hexdigest()


def test_saving_mid_block_is_refused() -> None:
    hasher = sha256_state.new()
    hasher.update(b"x" * 100)
    with pytest.raises(sha256_state.NotSerialisable):
        hasher.export()
    hasher.update(b"x" * 28)  # 128: a boundary again
    assert sha256_state.restore(hasher.export()) is not None


def test_malformed_saved_states_are_refused() -> None:
    with pytest.raises(ValueError, match="40 bytes"):
        sha256_state.restore(b"\x00" * 12)
    unaligned = bytes(32) + (100).to_bytes(8, "big")
    with pytest.raises(ValueError, match="block boundary"):
        sha256_state.restore(unaligned)


@pytest.mark.usefixtures("without_libcrypto")
def test_without_libcrypto_hashlib_is_used_and_states_are_not_saved() -> None:
    assert not sha256_state.available()
    hasher = sha256_state.new()
    assert not hasher.serialisable
    hasher.update(b"z" * 640)
    assert hasher.hexdigest() == hashlib.sha256(b"z" * 640).hexdigest()
    assert hasher.copy().size_bytes == 640
    with pytest.raises(sha256_state.NotSerialisable):
        hasher.export()
    assert sha256_state.restore(bytes(32) + (64).to_bytes(8, "big")) is None


def _plan(sizes: list[int], chunk_sha: str = "a") -> list[PlannedPart]:
    """Parts of equal chunks, one chunk per part, laid out back to back."""
    parts, start = [], 0
    for number, size in enumerate(sizes, start=1):
        covers = (CoveredChunk(number - 1, chunk_sha * 64, size, start),)
        parts.append(PlannedPart(number, start, size, covers))
        start += size
    return parts


def _rows(plan: list[PlannedPart], data: bytes) -> dict[int, FlushedPart]:
    """Part rows as a flusher saves them, from a fresh digest over `data`."""
    digest = PrefixDigest("u")
    digest.align(plan)
    rows = {}
    for part in plan:
        state = digest.state()
        state.update(data[part.start : part.start + part.size_bytes])
        digest.extend(part, state)
        checkpoint = digest.checkpoint(part.part_number)
        rows[part.part_number] = FlushedPart(
            part.part_number, part.size_bytes, "etag", part.covers, checkpoint
        )
    return rows


def test_a_digest_resumes_from_the_last_saved_state_of_the_current_layout() -> None:
    data = random.Random(3).randbytes(4 * 4096 + 1000)
    plan = _plan([4096] * 4 + [1000])
    rows = _rows(plan[:4], data)
    assert all(isinstance(row.checkpoint, HashCheckpoint) for row in rows.values())

    elsewhere = PrefixDigest("u")  # another replica: nothing hashed in memory
    elsewhere.align(plan)
    assert elsewhere.adopt_saved(rows) == 4
    state = elsewhere.state()
    state.update(data[4 * 4096 :])  # only the tail is read
    assert state.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_changed_part_voids_the_saved_states_of_it_and_every_later_part() -> None:
    plan = _plan([4096] * 4)
    rows = _rows(plan, random.Random(4).randbytes(4 * 4096))
    # Chunk 1 re-sent with other bytes: parts 3 and 4 cover the same chunks as before,
    # but the states saved with them were computed on the old part 2.
    changed = list(plan)
    old = plan[1]
    changed[1] = PlannedPart(
        2, old.start, old.size_bytes, (old.covers[0]._replace(sha256="b" * 64),)
    )
    digest = PrefixDigest("u")
    digest.align(changed)
    assert digest.adopt_saved(rows) == 1
    # Rows saved without a state (the fallback) resume nothing.
    bare = {n: FlushedPart(n, r.size_bytes, r.etag, r.covers) for n, r in rows.items()}
    fresh = PrefixDigest("u")
    fresh.align(plan)
    assert fresh.adopt_saved(bare) == 0


def test_a_saved_state_that_does_not_end_at_its_part_is_ignored() -> None:
    plan = _plan([4096] * 2)
    rows = _rows(plan, bytes(8192))
    wrong = sha256_state.new()
    wrong.update(bytes(64))
    assert rows[2].checkpoint is not None
    rows[2] = FlushedPart(
        2,
        4096,
        "etag",
        plan[1].covers,
        HashCheckpoint(rows[2].checkpoint.layout_sha256, wrong.export()),
    )
    digest = PrefixDigest("u")
    digest.align(plan)
    assert digest.adopt_saved(rows) == 1


@pytest.mark.usefixtures("without_libcrypto")
def test_with_the_fallback_no_state_is_saved_and_none_resumed() -> None:
    plan = _plan([4096] * 2)
    rows = _rows(plan, bytes(8192))
    assert [row.checkpoint for row in rows.values()] == [None, None]
