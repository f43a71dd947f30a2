"""A tus PATCH counts against the caller's staged-bytes quota as its bytes arrive, as a
chunk does (issue 12 item 3): past `MAX_STAGED_BYTES_PER_USER` it gets 507
`staging_quota_exceeded`, and what it staged beyond the quota is not kept."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import KeyPair
from app.settings import Settings
from tests.service_process import ServiceProcess, settings_env
from tests.tus.conftest import MiB, TusService

pytestmark = pytest.mark.slow
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def quota_service(
    settings_factory: Callable[..., Settings], keypair: KeyPair, s3: Any, tmp_path: Path
) -> Iterator[TusService]:
    settings = settings_factory(
        s3_part_size_bytes=5 * MiB, max_staged_bytes_per_user=3 * MiB, eager_flush=False
    )
    process = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log").start()
    yield TusService(process, settings, keypair, s3)
    process.stop()


def test_a_patch_past_the_users_staging_quota_gets_507(
    quota_service: TusService, recording: Path
) -> None:
    data = recording.read_bytes()[: 6 * MiB]
    headers = {**TUS, **quota_service.auth("hoarder")}
    metadata = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"filename": "big.wav", "main_service_file_id": "9"}.items()
    )
    created = httpx.post(
        quota_service.endpoint,
        headers={**headers, "Upload-Length": str(len(data)), "Upload-Metadata": metadata},
    )
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    patched = httpx.patch(
        url,
        content=data,
        headers={
            **headers,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
        },
        timeout=60,
    )
    assert patched.status_code == 507, patched.text
    assert patched.json()["error"]["code"] == "staging_quota_exceeded"
    held = int(httpx.head(url, headers=headers).headers["Upload-Offset"])
    assert held <= 3 * MiB
    assert quota_service.stored_keys() == []
