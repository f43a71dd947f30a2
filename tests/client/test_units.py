"""The small pure pieces: Retry-After parsing, backoff bounds, sizes, chunking, state."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import typer

from app.client.cli import parse_size
from app.client.files import DEFAULT_CHUNK_SIZE_BYTES, MiB, choose_chunk_size, chunk_count
from app.client.retry import RetryPolicy, is_retryable, parse_retry_after
from app.client.state import FileIdentity, StateStore, UploadState


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay_seconds=1, max_delay_seconds=10)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        delays = {policy.backoff_seconds(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1
    assert policy.delay_seconds(1, retry_after_seconds=5) == 5
    assert policy.delay_seconds(1, retry_after_seconds=10_000) == policy.max_retry_after_seconds


def test_which_answers_are_retried() -> None:
    assert all(is_retryable(s, None) for s in (408, 429, 500, 502, 503, 504, 507))
    assert is_retryable(409, "completion_in_progress")
    assert not any(is_retryable(s, None) for s in (400, 401, 403, 404, 409, 410, 413, 415, 422))


def test_sizes_and_chunking() -> None:
    assert parse_size("8M") == parse_size("8MiB") == 8 * MiB
    assert parse_size("512k") == 512 * 1024
    assert parse_size("1000") == 1000
    with pytest.raises(typer.BadParameter):
        parse_size("lots")
    assert chunk_count(0, 10) == 1
    assert chunk_count(21, 10) == 3
    assert choose_chunk_size(100 * MiB, None) == DEFAULT_CHUNK_SIZE_BYTES
    assert choose_chunk_size(100 * MiB, 1000) == 1000
    huge = 200 * 1024 * MiB
    assert chunk_count(huge, choose_chunk_size(huge, None)) <= 10_000


def test_state_is_tied_to_the_file_as_it_was(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)
    store = StateStore(tmp_path / "state")
    identity = FileIdentity.of(audio, 5, "http://127.0.0.1:8000/")
    store.save(UploadState(identity, "s-1", 4, 3, "ab" * 32, received_chunks=[0, 2]))

    assert store.load(FileIdentity.of(audio, 5, "http://127.0.0.1:8000")) is not None
    assert store.load(FileIdentity.of(audio, 6, "http://127.0.0.1:8000")) is None
    assert store.load(FileIdentity.of(audio, 5, "http://other:8000")) is None
    os.utime(audio, ns=(0, 0))
    assert store.load(FileIdentity.of(audio, 5, "http://127.0.0.1:8000")) is None
    (loaded,) = [store.load(identity)]
    assert loaded is not None
    assert loaded.received_chunks == [0, 2]
    store.path_for(identity).write_text("{not json")
    assert store.load(identity) is None
