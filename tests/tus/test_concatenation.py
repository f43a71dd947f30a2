"""tus concatenation over plain HTTP against a real service process and S3 server: two
partial uploads, a final upload naming them by their absolute URLs (as tus-js-client's
parallelUploads does), and the HEAD of the final upload naming them back."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.tus.conftest import TusService

pytestmark = pytest.mark.slow
TUS = {"Tus-Resumable": "1.0.0"}


def _partial(service: TusService, piece: bytes) -> str:
    headers = {**TUS, **service.auth()}
    created = httpx.post(
        service.endpoint,
        headers={**headers, "Upload-Concat": "partial", "Upload-Length": str(len(piece))},
    )
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    patched = httpx.patch(
        url,
        headers={
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=piece,
    )
    assert patched.status_code == 204, patched.text
    assert patched.headers["Upload-Offset"] == str(len(piece))
    return url


def test_head_of_a_final_upload_names_its_partial_uploads(
    tus_service: TusService, recording: Path
) -> None:
    data = recording.read_bytes()
    cut = len(data) // 3
    partials = [_partial(tus_service, data[:cut]), _partial(tus_service, data[cut:])]
    metadata = ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in {"filename": "joined.wav", "main_service_file_id": "51"}.items()
    )
    headers = {**TUS, **tus_service.auth()}
    final = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Concat": "final;" + " ".join(partials),
            "Upload-Metadata": metadata,
        },
    )
    assert final.status_code == 201, final.text
    final_url = final.headers["Location"]

    head = httpx.head(final_url, headers=headers)
    assert head.status_code == 200
    # The spec's example: `final;/files/a /files/b`, the partials' paths in their order.
    paths = [urlsplit(url).path for url in partials]
    assert head.headers["Upload-Concat"] == "final;" + " ".join(paths)
    assert all(path.startswith("/files/") for path in paths)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert head.headers["X-Upload-State"] == "completed"
    assert "Upload-Defer-Length" not in head.headers

    # The final upload is a file like any other: stored whole, in the partials' order.
    session_id = urlsplit(final_url).path.rsplit("/", 1)[-1]
    status = httpx.get(f"{tus_service.url}/upload/{session_id}", headers=tus_service.auth())
    stored = tus_service.stored(status.json()["data"]["result"]["key"])
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()

    # A second HEAD is answered from the record this process now caches: the same parts.
    again = httpx.head(final_url, headers=headers)
    assert again.headers["Upload-Concat"] == head.headers["Upload-Concat"]
