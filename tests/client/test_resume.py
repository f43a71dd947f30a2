"""Resuming: the connection cut mid-upload, Ctrl-C, an aborted session; each re-run asks
the service what it holds and sends only the rest (counted at a proxy in between)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import AsyncUploader, Progress
from app.dev.keys import KeyPair
from tests.client.cli_runner import SCRIPT, cli_env, run_cli_async
from tests.client.conftest import sha256_of_file, sha256_of_object
from tests.service_process import ServiceProcess
from tests.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
CHUNK_REQUEST = b"POST /upload/chunk "


def saved_state(state_dir: Path) -> dict[str, Any]:
    [path] = state_dir.glob("*.json")
    body: dict[str, Any] = json.loads(path.read_text())
    return body


def received_chunks(service: ServiceProcess, token: str, session_id: str) -> list[int]:
    response = httpx.get(
        f"{service.url}/upload/{session_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    chunks: list[int] = response.json()["data"]["received_chunks"]
    return chunks


async def test_connection_cut_mid_upload_then_rerun_sends_only_missing_chunks(
    service: ServiceProcess, big_wav: Path, keypair: KeyPair, s3: Any, bucket: str, tmp_path: Path
) -> None:
    token = keypair.token("user-1")
    state_dir = tmp_path / "state"
    env = cli_env(token, state_dir)
    proxy = await CuttableProxy("127.0.0.1", service.port, watch=[CHUNK_REQUEST]).start()
    try:
        args = [str(big_wav), "--file-id", "8", "--url", proxy.url, "--chunk-size", "1M", "--json"]
        proxy.cut_after_upstream_bytes = 12 * MiB

        first = await run_cli_async(*args, "--retries", "2", env=env)

        assert first.returncode == 6, first.stderr
        assert first.json()["error"]["kind"] == "UnavailableError"
        state = saved_state(state_dir)
        total_chunks = state["total_chunks"]
        held = received_chunks(service, token, state["session_id"])
        assert 0 < len(held) < total_chunks

        proxy.restore()
        proxy.cut_after_upstream_bytes = None
        sent_before = proxy.seen[CHUNK_REQUEST]
        second = await run_cli_async(*args, env=env)
        sent_by_rerun = proxy.seen[CHUNK_REQUEST] - sent_before
    finally:
        await proxy.stop()

    assert second.returncode == 0, second.stderr
    result = second.json()
    assert result["upload_session_id"] == state["session_id"]
    assert result["resumed"] is True
    assert sent_by_rerun == total_chunks - len(held)
    assert result["chunks_sent"] == total_chunks - len(held)
    assert result["chunks_skipped"] == len(held)
    expected = (sha256_of_file(big_wav), big_wav.stat().st_size)
    assert sha256_of_object(s3, bucket, result["key"]) == expected


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_exits_130_and_the_same_command_resumes(
    service: ServiceProcess, big_wav: Path, keypair: KeyPair, s3: Any, bucket: str, tmp_path: Path
) -> None:
    token = keypair.token("user-1")
    state_dir = tmp_path / "state"
    env = cli_env(token, state_dir)
    # A slow link (4 MB/s): the 30 MiB upload cannot finish before the Ctrl-C, however
    # fast the service is.
    proxy = await CuttableProxy("127.0.0.1", service.port).start()
    proxy.upstream_bytes_per_second = 4e6
    args = [str(big_wav), "--file-id", "9", "--url", proxy.url, "--chunk-size", "512k"]
    args += ["--parallel", "2"]
    process = subprocess.Popen(
        [str(SCRIPT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background (CI, `cmd &`) runs with
        # SIGINT ignored, and an ignored signal stays ignored in the children it starts.
        preexec_fn=_sigint_as_at_a_terminal,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            states = list(state_dir.glob("*.json"))
            if states and len(saved_state(state_dir)["received_chunks"]) >= 4:
                break
            await asyncio.sleep(0.05)  # polling the client's state file, with a deadline
        assert process.poll() is None, "the upload ended before it could be interrupted"
        os.kill(process.pid, signal.SIGINT)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)

        assert process.returncode == 130, stderr
        assert "run the same command again" in stderr.lower()
        # Drop what the slow link still holds of the interrupted requests.
        proxy.cut()
        state = saved_state(state_dir)
        held = received_chunks(service, token, state["session_id"])
        assert 4 <= len(held) < state["total_chunks"]

        proxy.restore()
        proxy.upstream_bytes_per_second = None
        rerun = await run_cli_async(*args, "--json", env=env)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await proxy.stop()

    assert rerun.returncode == 0, rerun.stderr
    result = rerun.json()
    assert result["upload_session_id"] == state["session_id"]
    # A request the link had fully passed on may land just after `held` was read.
    skipped = result["chunks_skipped"]
    assert len(held) <= skipped <= len(held) + 2
    assert result["chunks_sent"] == state["total_chunks"] - skipped
    assert f"holds {skipped} of {state['total_chunks']} chunks" in rerun.stderr
    expected = (sha256_of_file(big_wav), big_wav.stat().st_size)
    assert sha256_of_object(s3, bucket, result["key"]) == expected


class StopAfter(Exception):
    pass


async def test_an_aborted_session_is_replaced_with_a_clear_notice(
    service: ServiceProcess,
    audio_wav: bytes,
    keypair: KeyPair,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    token = keypair.token("user-1")
    notices: list[str] = []

    def crash_after_two_chunks(progress: Progress) -> None:
        if progress.chunks_done >= 2:
            raise StopAfter

    first = AsyncUploader(
        token,
        base_url=service.url,
        chunk_size=64 * 1024,
        parallel=1,
        state_dir=tmp_path / "state",
        on_progress=crash_after_two_chunks,
    )
    with pytest.raises(StopAfter):
        await first.upload(path, 11)
    old_session = saved_state(tmp_path / "state")["session_id"]
    async with httpx.AsyncClient(base_url=service.url) as http:
        aborted = await http.delete(
            f"/upload/{old_session}", headers={"Authorization": f"Bearer {token}"}
        )
    assert aborted.status_code == 200

    second = AsyncUploader(
        token,
        base_url=service.url,
        chunk_size=64 * 1024,
        state_dir=tmp_path / "state",
        on_notice=notices.append,
    )
    result = await second.upload(path, 11)

    assert result.session_id != old_session
    assert result.resumed is False
    assert any(old_session in text and "aborted" in text for text in notices), notices
    assert sha256_of_object(s3, bucket, result.key) == (sha256_of_file(path), len(audio_wav))


async def test_a_session_completed_behind_our_back_returns_its_result(
    service: ServiceProcess, audio_wav: bytes, keypair: KeyPair, tmp_path: Path
) -> None:
    """The process died after sending complete but before saving the answer: the re-run
    finds the session completed and returns its result without uploading again."""
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    token = keypair.token("user-1")

    def crash_when_completing(progress: Progress) -> None:
        if progress.phase == "completing":
            raise StopAfter

    uploader = AsyncUploader(
        token,
        base_url=service.url,
        chunk_size=128 * 1024,
        state_dir=tmp_path / "state",
        on_progress=crash_when_completing,
    )
    with pytest.raises(StopAfter):
        await uploader.upload(path, 12)
    state = saved_state(tmp_path / "state")
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
        done = await http.post(
            "/upload/complete",
            json={
                "upload_session_id": state["session_id"],
                "total_chunks": state["total_chunks"],
                "main_service_file_id": 12,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    assert done.status_code == 200, done.text

    uploader.on_progress = None
    result = await uploader.upload(path, 12)

    assert result.session_id == state["session_id"]
    assert result.chunks_sent == 0
    assert result.key == done.json()["data"]["key"]


async def test_a_service_killed_mid_upload_is_retried_until_it_is_back(
    service: ServiceProcess,
    audio_wav: bytes,
    keypair: KeyPair,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    """kill -9 of the service after three chunks: the client retries with backoff, the
    service comes back on the same port with its database, the same run finishes."""
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    killed = asyncio.Event()

    def kill_after_three_chunks(progress: Progress) -> None:
        if progress.chunks_done == 3 and not killed.is_set():
            service.kill()
            killed.set()

    uploader = AsyncUploader(
        keypair.token("user-1"),
        base_url=service.url,
        chunk_size=64 * 1024,
        parallel=1,
        state_dir=tmp_path / "state",
        on_progress=kill_after_three_chunks,
    )
    upload = asyncio.create_task(uploader.upload(path, 13))
    await asyncio.wait_for(killed.wait(), 60)
    await asyncio.to_thread(service.start)
    result = await asyncio.wait_for(upload, 120)

    assert result.session_id == saved_state(tmp_path / "state")["session_id"]
    assert result.chunks_sent == -(-len(audio_wav) // (64 * 1024))
    assert sha256_of_object(s3, bucket, result.key) == (sha256_of_file(path), len(audio_wav))
