"""tus 1.0 with tus-js-client (npm, in Node) against a real service process and S3
server: one PATCH for the whole file (its default), `chunkSize`, `parallelUploads: 3`
(concatenation), a deferred length, and a connection cut mid-upload that it resumes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tcp_proxy import CuttableProxy
from tests.tus.conftest import MiB, TusService

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]
CLIENTS = Path(__file__).resolve().parents[1] / "tus_clients"


async def run_tus_js(endpoint: str, token: str, file: Path, **options: Any) -> dict[str, Any]:
    args = {
        "endpoint": endpoint,
        "token": token,
        "file": str(file),
        "metadata": {"filename": file.name, "main_service_file_id": "12"},
        **options,
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        str(CLIENTS / "upload.mjs"),
        json.dumps(args),
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stored_sha256(service: TusService, url: str) -> tuple[str, dict[str, Any]]:
    session_id = url.rstrip("/").rsplit("/", 1)[-1]
    status = httpx.get(f"{service.url}/upload/{session_id}", headers=service.auth())
    data: dict[str, Any] = status.json()["data"]
    assert data["state"] == "completed", data
    return hashlib.sha256(service.stored(data["result"]["key"])).hexdigest(), data


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="one-patch"),
        pytest.param({"chunkSize": 1 * MiB}, id="chunkSize"),
        pytest.param({"parallelUploads": 3}, id="parallelUploads"),
        pytest.param({"uploadLengthDeferred": True, "chunkSize": 2 * MiB}, id="deferred"),
    ],
)
async def test_tus_js_client_uploads_reach_s3_intact(
    tus_service: TusService, recording: Path, options: dict[str, Any]
) -> None:
    token = tus_service.keypair.token("user-1")
    result = await run_tus_js(tus_service.endpoint, token, recording, **options)
    assert "url" in result, result
    digest, data = stored_sha256(tus_service, result["url"])
    assert digest == hashlib.sha256(recording.read_bytes()).hexdigest()
    assert data["result"]["content_type"] == "audio/wav"
    assert data["original_file_name"] == recording.name
    # Only the final object: partial uploads never reach the bucket.
    assert tus_service.stored_keys() == [data["result"]["key"]]


async def test_tus_js_client_resumes_after_a_cut_and_sends_only_the_rest(
    tus_service: TusService, recording: Path
) -> None:
    size = recording.stat().st_size
    proxy = await CuttableProxy("127.0.0.1", tus_service.process.port).start()
    proxy.cut_after_upstream_bytes = size // 2

    async def restore_after_the_cut() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while proxy.online and loop.time() < deadline:
            await asyncio.sleep(0.05)
        proxy.cut_after_upstream_bytes = None
        proxy.restore()

    try:
        restorer = asyncio.create_task(restore_after_the_cut())
        result = await run_tus_js(
            f"{proxy.url}/files/",
            tus_service.keypair.token("user-1"),
            recording,
            retryDelays=[300, 600, 1000, 2000, 4000],
        )
        await restorer
    finally:
        await proxy.stop()
    assert "url" in result, result
    assert proxy.connections >= 2  # it really was cut and came back
    # What reached the service: the first half once, then only the rest.
    assert proxy.upstream_bytes < size + 256 * 1024
    digest, _ = stored_sha256(tus_service, result["url"])
    assert digest == hashlib.sha256(recording.read_bytes()).hexdigest()


async def test_a_png_named_mp3_is_refused_with_415_and_nothing_is_stored(
    tus_service: TusService, png_as_mp3: Path
) -> None:
    result = await run_tus_js(tus_service.endpoint, tus_service.keypair.token("user-1"), png_as_mp3)
    assert result.get("status") == 415, result
    assert tus_service.stored_keys() == []
