"""Abuse limits, each with its setting and its error: open sessions per user (429),
the staging cap and a really full staging filesystem (507, no partial file), and the
cap on JSON bodies (413, checked while the body streams)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.main import create_app
from tests.conftest import running
from tests.processes import make_wav, staged_files
from tests.support import UploadApi, assert_error

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_wav(tmp_path_factory.mktemp("audio") / "long.wav", 20)  # ~3.5 MB


async def test_open_sessions_per_user_are_capped(settings_factory, keypair):
    async with running(create_app(settings_factory(max_open_sessions_per_user=2))) as client:
        api = UploadApi(client, keypair)
        first = await api.session(file_id=1)
        await api.session(file_id=2)
        body = assert_error(await api.init(3), 429, "too_many_open_sessions")
        assert body["error"]["details"] == {"max_open_sessions": 2}
        assert (await api.init(3, sub="someone-else")).status_code == 200
        assert (await api.abort(first)).status_code == 200
        assert (await api.init(3)).status_code == 200


async def test_staging_cap_refuses_with_507_and_leaves_no_partial_file(
    settings_factory, keypair, long_wav
):
    settings = settings_factory(staging_max_bytes=2 * MiB)
    staging = settings.local_temp_chunk_path
    async with running(create_app(settings)) as client:
        api = UploadApi(client, keypair)
        session_id = await api.session()
        assert (await api.chunk(session_id, 0, long_wav[: MiB + 1000])).status_code == 200
        refused = await api.chunk(session_id, 1, long_wav[: 2 * MiB])
        body = assert_error(refused, 507, "staging_full")
        assert body["error"]["details"] == {"staging_max_bytes": 2 * MiB}
        assert staged_files(staging, "incoming") == []
        assert len(staged_files(staging, "sessions")) == 1
        # Freed space is usable again: the cap counts what is staged, not what was.
        assert (await api.abort(session_id)).status_code == 200
        other = await api.session(file_id=7)
        assert (await api.chunk(other, 0, long_wav[: 2 * MiB - 1000])).status_code == 200


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, for a real ENOSPC; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a size-limited filesystem here")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {made.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_staging_filesystem_gives_507_and_no_partial_file(
    settings_factory, keypair, long_wav, small_filesystem
):
    # No free-space reserve here: the point is a real ENOSPC (the reserve is tested in
    # tests/api/test_hostile_edge.py).
    settings = settings_factory(
        local_temp_chunk_path=small_filesystem / "staging", staging_min_free_bytes=0
    )
    async with running(create_app(settings)) as client:
        api = UploadApi(client, keypair)
        session_id = await api.session()
        assert (await api.chunk(session_id, 0, long_wav[:MiB])).status_code == 200
        assert_error(await api.chunk(session_id, 1, long_wav[: 3 * MiB]), 507, "staging_full")
        assert staged_files(small_filesystem / "staging", "incoming") == []
        status = (await api.status(session_id)).json()["data"]
        assert status["received_chunks"] == [0]


async def test_a_small_chunk_on_a_full_filesystem_gives_507_and_leaves_nothing_counted(
    settings_factory, keypair, long_wav, small_filesystem
):
    """A small chunk is written in its record's hand-off (not by its writer): ENOSPC there
    is the same 507, nothing of it stays on disk or in the staging cap's count."""
    cap = MiB + 1536  # room for chunk 0 and one 1 KiB chunk, not for a leaked second
    settings = settings_factory(
        local_temp_chunk_path=small_filesystem / "staging",
        staging_min_free_bytes=0,
        staging_max_bytes=cap,
    )
    async with running(create_app(settings)) as client:
        api = UploadApi(client, keypair)
        session_id = await api.session()
        assert (await api.chunk(session_id, 0, long_wav[:MiB])).status_code == 200
        filler = small_filesystem / "filler"
        with filler.open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(bytes(4096))
            except OSError:
                pass  # the filesystem is full
        assert_error(await api.chunk(session_id, 1, long_wav[:1024]), 507, "staging_full")
        assert staged_files(small_filesystem / "staging", "incoming") == []
        assert len(staged_files(small_filesystem / "staging", "sessions")) == 1  # chunk 0
        filler.unlink()
        assert (await api.chunk(session_id, 1, long_wav[:1024])).status_code == 200
        status = (await api.status(session_id)).json()["data"]
        assert status["received_chunks"] == [0, 1]


async def test_json_bodies_are_capped_while_streaming(settings_factory, keypair, long_wav):
    async with running(create_app(settings_factory(max_json_body_bytes=4096))) as client:
        api = UploadApi(client, keypair)
        padding = "x" * 10_000
        declared = await api.init(1, padding=padding)
        assert_error(declared, 413, "request_too_large")

        async def undeclared_length() -> AsyncIterator[bytes]:
            yield b'{"main_service_file_id": 1, "original_file_name": "a.wav", "pad": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        streamed = await client.post(
            "/upload/init",
            content=undeclared_length(),
            headers={**api.headers(), "Content-Type": "application/json"},
        )
        assert_error(streamed, 413, "request_too_large")
        # A normal body passes, and chunks are not subject to the JSON cap.
        session_id = await api.session(file_id=2)
        chunk = await api.chunk(session_id, 0, long_wav[:100_000])
        assert chunk.status_code == 200, chunk.text
