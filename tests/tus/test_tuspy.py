"""tus 1.0 with tuspy (a real tus client) against a real service process and S3 server:
upload with Upload-Checksum, resume after a cut, ownership, refusal of non-audio, a wrong
checksum (460), termination, version and capability discovery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from tests.tcp_proxy import CuttableProxy
from tests.tus.conftest import MiB, TusService

pytestmark = pytest.mark.slow
TUS = {"Tus-Resumable": "1.0.0"}


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def test_tuspy_upload_with_checksum_reaches_s3_intact(
    tus_service: TusService, recording: Path
) -> None:
    data = recording.read_bytes()
    client = tus_client.TusClient(tus_service.endpoint, headers=tus_service.auth())
    uploader = client.uploader(
        str(recording),
        chunk_size=3 * MiB,
        upload_checksum=True,
        metadata={"filename": "interview.wav", "main_service_file_id": "41"},
    )
    uploader.upload()
    assert uploader.url is not None
    session_id = uploader.url.rstrip("/").rsplit("/", 1)[-1]

    head = httpx.head(uploader.url, headers={**TUS, **tus_service.auth()})
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert head.headers["X-Upload-State"] == "completed"
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "filename" in head.headers["Upload-Metadata"]

    status = httpx.get(f"{tus_service.url}/upload/{session_id}", headers=tus_service.auth())
    result = status.json()["data"]["result"]
    assert (
        hashlib.sha256(tus_service.stored(result["key"])).hexdigest()
        == hashlib.sha256(data).hexdigest()
    )
    assert result["content_type"] == "audio/wav"
    assert status.json()["data"]["main_service_file_id"] == 41


def test_a_wrong_checksum_is_460_and_the_offset_stays(tus_service: TusService) -> None:
    headers = {**TUS, **tus_service.auth()}
    created = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Length": "1000",
            "Upload-Metadata": _metadata(filename="a.wav", main_service_file_id="1"),
        },
    )
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    body = b"\x01" * 600
    other = hashlib.sha1(b"something else").digest()  # noqa: S324 - the checksum tus names
    wrong = base64.b64encode(other).decode()
    patched = httpx.patch(
        url,
        content=body,
        headers={
            **headers,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
            "Upload-Checksum": f"sha1 {wrong}",
        },
    )
    assert patched.status_code == 460, patched.text
    assert patched.json()["error"]["code"] == "upload_checksum_mismatch"
    assert httpx.head(url, headers=headers).headers["Upload-Offset"] == "0"

    right = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - tus's md5
    patched = httpx.patch(
        url,
        content=body,
        headers={
            **headers,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
            "Upload-Checksum": f"md5 {right}",
        },
    )
    assert patched.status_code == 204, patched.text
    assert patched.headers["Upload-Offset"] == "600"
    unknown = httpx.patch(
        url,
        content=b"x",
        headers={
            **headers,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "600",
            "Upload-Checksum": "crc32 AAAA",
        },
    )
    assert unknown.status_code == 400


def test_another_users_token_gets_404(tus_service: TusService) -> None:
    owner = {**TUS, **tus_service.auth("owner")}
    stranger = {**TUS, **tus_service.auth("stranger")}
    created = httpx.post(
        tus_service.endpoint,
        headers={
            **owner,
            "Upload-Length": "10",
            "Upload-Metadata": _metadata(filename="a.mp3", main_service_file_id="5"),
        },
    )
    url = created.headers["Location"]
    assert httpx.head(url, headers=stranger).status_code == 404
    patched = httpx.patch(
        url,
        content=b"0123456789",
        headers={
            **stranger,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
        },
    )
    assert patched.status_code == 404
    assert httpx.delete(url, headers=stranger).status_code == 404
    assert httpx.head(url, headers=owner).headers["Upload-Offset"] == "0"


def test_a_png_named_mp3_is_refused_on_the_final_patch(
    tus_service: TusService, png_as_mp3: Path
) -> None:
    client = tus_client.TusClient(tus_service.endpoint, headers=tus_service.auth())
    uploader = client.uploader(
        str(png_as_mp3), metadata={"filename": "cover.mp3", "main_service_file_id": "3"}
    )
    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()
    assert refused.value.status_code == 415
    assert tus_service.stored_keys() == []
    # The outcome is also what HEAD says: all bytes held, not completed.
    head = httpx.head(uploader.url or "", headers={**TUS, **tus_service.auth()})
    assert head.headers["X-Upload-State"] == "uploading"
    assert head.headers["Upload-Offset"] == str(png_as_mp3.stat().st_size)


def test_termination_version_and_capabilities(tus_service: TusService) -> None:
    headers = {**TUS, **tus_service.auth()}
    options = httpx.options(tus_service.endpoint)
    assert options.status_code == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    assert "concatenation" in options.headers["Tus-Extension"].split(",")
    assert options.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256"
    assert options.headers["Tus-Max-Size"] == str(tus_service.settings.max_file_size)

    old = httpx.post(tus_service.endpoint, headers={**headers, "Tus-Resumable": "0.2.2"})
    assert old.status_code == 412 and old.headers["Tus-Version"] == "1.0.0"

    created = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Length": "10",
            "Upload-Metadata": _metadata(filename="a.flac", main_service_file_id="2"),
        },
    )
    assert created.status_code == 201
    assert created.headers["Upload-Expires"].endswith("GMT")
    url = created.headers["Location"]
    # X-HTTP-Method-Override turns a POST into the DELETE.
    deleted = httpx.post(url, headers={**headers, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204 and deleted.headers["Tus-Resumable"] == "1.0.0"
    assert httpx.head(url, headers=headers).status_code == 404

    no_name = httpx.post(tus_service.endpoint, headers={**headers, "Upload-Length": "10"})
    assert no_name.status_code == 422
    too_big = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Length": str(tus_service.settings.max_file_size + 1),
            "Upload-Metadata": _metadata(filename="a.wav", main_service_file_id="2"),
        },
    )
    assert too_big.status_code == 413


async def test_a_cut_patch_keeps_its_bytes_and_the_resume_sends_only_the_rest(
    tus_service: TusService, recording: Path
) -> None:
    data = recording.read_bytes()
    headers = {**TUS, **tus_service.auth()}
    created = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": _metadata(filename="interview.wav", main_service_file_id="8"),
        },
    )
    url = created.headers["Location"]
    proxy = await CuttableProxy("127.0.0.1", tus_service.process.port).start()
    proxy.cut_after_upstream_bytes = len(data) // 2 + 7
    path = url.split("/files/", 1)[1]

    def whole_file_patch() -> None:
        # One PATCH for the whole file, as tus-js-client sends by default.
        httpx.patch(
            f"{proxy.url}/files/{path}",
            content=data,
            headers={
                **headers,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
            },
            timeout=30,
        )

    with pytest.raises(httpx.TransportError):
        await asyncio.to_thread(whole_file_patch)
    await proxy.stop()

    # The service keeps what arrived; poll until the cut request has recorded it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    offset = 0
    while loop.time() < deadline:
        head = await asyncio.to_thread(httpx.head, url, headers=headers)
        offset = int(head.headers["Upload-Offset"])
        if offset >= len(data) // 3:
            break
        await asyncio.sleep(0.1)
    # The cut request may still be recording its last piece. A PATCH takes the writer
    # lease, so it answers only once that request has let the upload go: an empty one at
    # the offset seen is 204 if that offset is final, else 409 (then HEAD again).
    synced: httpx.Response | None = None
    while loop.time() < deadline:
        synced = await asyncio.to_thread(
            httpx.patch,
            url,
            content=b"",
            headers={
                **headers,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(offset),
            },
            timeout=30,
        )
        if synced.status_code == 204:
            break
        assert synced.status_code == 409, synced.text
        head = await asyncio.to_thread(httpx.head, url, headers=headers)
        offset = int(head.headers["Upload-Offset"])
    assert synced is not None and synced.status_code == 204
    assert len(data) // 3 <= offset <= len(data) // 2 + 7

    resume_proxy = await CuttableProxy("127.0.0.1", tus_service.process.port).start()
    try:
        client = tus_client.TusClient(f"{resume_proxy.url}/files/", headers=tus_service.auth())

        def resume() -> None:
            # In a thread: making the uploader already asks (HEAD) through the proxy,
            # which runs on this event loop.
            uploader = client.uploader(
                str(recording), url=f"{resume_proxy.url}/files/{path}", chunk_size=len(data)
            )
            uploader.upload()

        await asyncio.to_thread(resume)
        sent = resume_proxy.upstream_bytes
    finally:
        await resume_proxy.stop()
    assert len(data) - offset <= sent < len(data) - offset + 64 * 1024
    status = httpx.get(f"{tus_service.url}/upload/{path}", headers=tus_service.auth())
    result = status.json()["data"]["result"]
    assert (
        hashlib.sha256(tus_service.stored(result["key"])).digest() == hashlib.sha256(data).digest()
    )


async def test_a_new_patch_takes_over_from_a_stalled_one_within_seconds(
    tus_service: TusService, recording: Path
) -> None:
    """The first PATCH's client went silent with its connection open (a phone that lost
    its network): the next PATCH asks for the upload, the stalled request stops and keeps
    what it got, and the client goes on from there, long before the idle timeout."""
    data = recording.read_bytes()
    headers = {**TUS, **tus_service.auth()}
    created = httpx.post(
        tus_service.endpoint,
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": _metadata(filename="interview.wav", main_service_file_id="9"),
        },
    )
    url = created.headers["Location"]
    _, _, port_and_path = url.partition("://127.0.0.1:")
    _reader, writer = await asyncio.open_connection("127.0.0.1", tus_service.process.port)
    path = "/" + port_and_path.split("/", 1)[1]
    head_lines = [
        f"PATCH {path} HTTP/1.1",
        f"Host: 127.0.0.1:{tus_service.process.port}",
        "Tus-Resumable: 1.0.0",
        f"Authorization: {headers['Authorization']}",
        "Content-Type: application/offset+octet-stream",
        "Upload-Offset: 0",
        f"Content-Length: {len(data)}",
    ]
    stalled_bytes = 1 * MiB
    writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode() + data[:stalled_bytes])
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            offset = -1
            # As a tus client does: HEAD, PATCH from there; 409/423 mean HEAD again.
            while loop.time() - started < 30:
                offset = int((await http.head(url)).headers["Upload-Offset"])
                patched = await http.patch(
                    url,
                    content=data[offset:],
                    headers={
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": str(offset),
                    },
                )
                if patched.status_code == 204:
                    break
                assert patched.status_code in (409, 423), patched.text
            assert patched.status_code == 204
    finally:
        writer.close()
    # Far below CHUNK_IDLE_TIMEOUT_SECONDS (60): the lease was handed over on request.
    assert loop.time() - started < 20
    assert offset == stalled_bytes  # the stalled request's bytes were kept and used
    session_id = url.rsplit("/", 1)[-1]
    status = httpx.get(f"{tus_service.url}/upload/{session_id}", headers=tus_service.auth())
    result = status.json()["data"]["result"]
    assert (
        hashlib.sha256(tus_service.stored(result["key"])).digest() == hashlib.sha256(data).digest()
    )
