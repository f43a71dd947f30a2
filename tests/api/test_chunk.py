"""POST /upload/chunk: streaming, limits, order, replacement, and what is left on disk."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from fastapi.responses import JSONResponse

from app.api.envelope import success
from app.api.uploads import chunk_stored_response
from app.dev.keys import KeyPair
from app.main import create_app
from app.settings import Settings
from tests.conftest import running
from tests.support import UploadApi, assert_error, sha256, split


def staged_files(settings: Settings) -> list[Path]:
    root = settings.local_temp_chunk_path
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != "uploads.db" and not p.name.startswith("uploads.db")
    )


async def test_chunk_returns_the_seed_body(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    response = await api.chunk(session_id, 0, audio_wav[:1000])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "status": "success",
        "message": "Chunk uploaded successfully.",
        "data": {"chunk_index": 0, "size": 1000, "sha256": sha256(audio_wav[:1000])},
    }


async def test_field_order_does_not_matter(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    boundary = "b0undary"
    piece = audio_wav[:5000]

    def part(name: str, value: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )

    body = (
        part("chunk", piece, "c.bin")
        + part("chunk_index", b"3")
        + part("upload_session_id", session_id.encode())
        + f"--{boundary}--\r\n".encode()
    )
    response = await api.client.post(
        "/upload/chunk",
        content=body,
        headers={**api.headers(), "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"chunk_index": 3, "size": 5000, "sha256": sha256(piece)}
    status = (await api.status(session_id)).json()["data"]
    assert status["received_chunks"] == [3]


async def test_missing_fields_are_422(api: UploadApi, audio_wav: bytes, settings: Settings) -> None:
    session_id = await api.session()
    headers = api.headers()
    no_chunk = await api.client.post(
        "/upload/chunk",
        headers=headers,
        files={"upload_session_id": (None, session_id), "chunk_index": (None, "0")},
    )
    body = assert_error(no_chunk, 422, "validation_error")
    assert body["error"]["details"]["missing"] == ["chunk"]
    no_index = await api.client.post(
        "/upload/chunk",
        headers=headers,
        files={"upload_session_id": (None, session_id), "chunk": ("c", audio_wav[:100])},
    )
    assert assert_error(no_index, 422, "validation_error")["error"]["details"]["missing"] == [
        "chunk_index"
    ]
    not_multipart = await api.client.post("/upload/chunk", headers=headers, json={"a": 1})
    assert_error(not_multipart, 422, "validation_error")
    assert staged_files(settings) == []


async def test_bad_indexes_are_422_and_leave_nothing(
    api: UploadApi, audio_wav: bytes, settings: Settings
) -> None:
    session_id = await api.session(total_chunks=2)
    for index in ["-1", "abc", "1.5", str(settings.max_chunks), "2"]:
        response = await api.chunk(session_id, index, audio_wav[:100])
        assert_error(response, 422, "validation_error")
    assert staged_files(settings) == []


async def test_bad_session_ids(api: UploadApi, audio_wav: bytes, settings: Settings) -> None:
    assert_error(await api.chunk("../../etc", 0, b"x"), 422, "validation_error")
    unknown = "6f1c9d8e-7a55-4c1e-9f4e-0d2b1a3c5e7f"
    assert_error(await api.chunk(unknown, 0, audio_wav[:100]), 404, "session_not_found")
    assert staged_files(settings) == []


async def test_other_users_session_is_404(
    api: UploadApi, audio_wav: bytes, settings: Settings
) -> None:
    session_id = await api.session()
    response = await api.chunk(session_id, 0, audio_wav[:100], sub="intruder")
    assert_error(response, 404, "session_not_found")
    assert staged_files(settings) == []


async def test_oversize_chunk_is_413_and_leaves_no_partial_file(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    settings = settings_factory(max_chunk_size=100_000)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        # Declared length over the limit: refused before reading the body.
        response = await api.chunk(session_id, 0, audio_wav[:300_000])
        assert_error(response, 413, "chunk_too_large")

        # No declared length (streamed): refused while streaming.
        async def body() -> AsyncIterator[bytes]:
            yield (
                b'--x\r\nContent-Disposition: form-data; name="upload_session_id"\r\n\r\n'
                + session_id.encode()
                + b"\r\n--x\r\nContent-Disposition: form-data; "
                b'name="chunk_index"\r\n\r\n0\r\n--x\r\nContent-Disposition: form-data; '
                b'name="chunk"; filename="c"\r\n\r\n'
            )
            for _ in range(4):
                yield audio_wav[:40_000]
            yield b"\r\n--x--\r\n"

        streamed = await http.post(
            "/upload/chunk",
            content=body(),
            headers={**api.headers(), "content-type": "multipart/form-data; boundary=x"},
        )
        assert_error(streamed, 413, "chunk_too_large")
        assert staged_files(settings) == []
        status = (await api.status(session_id)).json()["data"]
        assert status["received_chunks"] == []
        ok = await api.chunk(session_id, 0, audio_wav[:100_000])
        assert ok.status_code == 200


async def test_session_over_max_file_size_is_413(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    settings = settings_factory(max_chunk_size=100_000, max_file_size=250_000)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        for index in range(2):
            assert (await api.chunk(session_id, index, audio_wav[:100_000])).status_code == 200
        assert_error(await api.chunk(session_id, 2, audio_wav[:100_000]), 413, "file_too_large")
        # Replacing an existing chunk does not count it twice.
        assert (await api.chunk(session_id, 1, audio_wav[:100_000])).status_code == 200
        assert len(staged_files(settings)) == 2


async def test_session_size_cap_is_exact_when_chunks_are_replaced(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    # The cap is checked against the session's running total: a replaced chunk's bytes
    # leave it, a refused chunk's never enter it, whether it grows or shrinks the total.
    settings = settings_factory(max_chunk_size=200_000, max_file_size=250_000)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        for index in range(2):
            assert (await api.chunk(session_id, index, audio_wav[:100_000])).status_code == 200
        # 100,000 + 150,000: exactly the cap.
        assert (await api.chunk(session_id, 1, audio_wav[:150_000])).status_code == 200
        # One byte over it: refused, and the chunk it would have replaced stays.
        assert_error(await api.chunk(session_id, 1, audio_wav[:150_001]), 413, "file_too_large")
        assert_error(await api.chunk(session_id, 2, audio_wav[:1]), 413, "file_too_large")
        status = (await api.status(session_id)).json()["data"]
        assert (status["received_chunks"], status["received_bytes"]) == ([0, 1], 250_000)
        # Shrinking a chunk makes room that a new chunk may take, to the byte.
        assert (await api.chunk(session_id, 1, audio_wav[:50_000])).status_code == 200
        assert (await api.chunk(session_id, 2, audio_wav[:100_000])).status_code == 200
        assert_error(await api.chunk(session_id, 3, audio_wav[:1]), 413, "file_too_large")
        status = (await api.status(session_id)).json()["data"]
        assert (status["received_chunks"], status["received_bytes"]) == ([0, 1, 2], 250_000)
        assert len(staged_files(settings)) == 3


async def test_resent_chunk_replaces_the_old_one(
    api: UploadApi, audio_wav: bytes, settings: Settings
) -> None:
    session_id = await api.session()
    first, second = audio_wav[:1000], audio_wav[1000:2500]
    assert (await api.chunk(session_id, 0, first)).status_code == 200
    response = await api.chunk(session_id, 0, second)
    assert response.json()["data"] == {"chunk_index": 0, "size": 1500, "sha256": sha256(second)}
    files = staged_files(settings)
    assert len(files) == 1
    assert files[0].read_bytes() == second
    status = (await api.status(session_id)).json()["data"]
    assert status["received_chunks"] == [0]
    assert status["received_bytes"] == 1500


async def test_parallel_resends_of_one_index_leave_exactly_one_file(
    api: UploadApi,
    audio_wav: bytes,
    settings: Settings,
) -> None:
    session_id = await api.session()
    versions = [audio_wav[i * 1000 : (i + 1) * 1000 + i] for i in range(6)]
    responses = await asyncio.gather(*(api.chunk(session_id, 0, v) for v in versions))
    assert all(r.status_code == 200 for r in responses)
    files = staged_files(settings)
    assert len(files) == 1
    status = (await api.status(session_id)).json()["data"]
    assert status["received_bytes"] == len(files[0].read_bytes())
    assert files[0].read_bytes() in versions


async def test_chunk_checksum_mismatch_is_422_and_discarded(
    api: UploadApi,
    audio_wav: bytes,
    settings: Settings,
) -> None:
    session_id = await api.session()
    piece = audio_wav[:4096]
    wrong = hashlib.sha256(b"something else").hexdigest()
    assert_error(
        await api.chunk(session_id, 0, piece, chunk_sha256=wrong), 422, "checksum_mismatch"
    )
    assert_error(await api.chunk(session_id, 0, piece, chunk_sha256="zz"), 422, "validation_error")
    assert staged_files(settings) == []
    ok = await api.chunk(session_id, 0, piece, chunk_sha256=sha256(piece).upper())
    assert ok.status_code == 200


async def test_parallel_out_of_order_chunks(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    chunks = split(audio_wav, 20_000)
    await api.send_all(session_id, chunks, parallel=6, shuffle=True)
    status = (await api.status(session_id)).json()["data"]
    assert status["received_chunks"] == list(range(len(chunks)))
    assert status["received_bytes"] == len(audio_wav)


async def test_truncated_body_leaves_no_partial_file(
    api: UploadApi, audio_wav: bytes, settings: Settings
) -> None:
    session_id = await api.session()
    body = (
        b'--x\r\nContent-Disposition: form-data; name="upload_session_id"\r\n\r\n'
        + session_id.encode()
        + b"\r\n--x\r\nContent-Disposition: form-data; "
        b'name="chunk"; filename="c"\r\n\r\n' + audio_wav[:50_000]
    )
    response = await api.client.post(
        "/upload/chunk",
        content=body,
        headers={**api.headers(), "content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 422
    assert staged_files(settings) == []


async def test_chunk_after_abort_is_409(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    assert (await api.abort(session_id)).status_code == 200
    assert_error(
        await api.chunk(session_id, 0, audio_wav[:100]), 409, "session_not_accepting_chunks"
    )


async def test_expired_session_is_410(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    settings = settings_factory()
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        session_id = await api.session()
        container = http._transport.app.state.container  # type: ignore[attr-defined]
        from datetime import UTC, datetime, timedelta

        from sqlalchemy import update

        from app.storage.tables import upload_sessions

        async with container.engine.begin() as conn:
            await conn.execute(
                update(upload_sessions).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert_error(await api.chunk(session_id, 0, audio_wav[:100]), 410, "session_expired")
        assert_error(await api.complete(session_id, 1), 410, "session_expired")
        status = (await api.status(session_id)).json()["data"]
        assert status["state"] == "expired"


async def test_empty_body_stream_is_422(api: UploadApi) -> None:
    response = await api.client.post(
        "/upload/chunk",
        content=b"",
        headers={**api.headers(), "content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 422
    assert isinstance(response, httpx.Response)


def one_piece(fields: dict[str, str], data: bytes) -> tuple[bytes, str]:
    """A chunk form as one body: the server gets the whole chunk part in one piece."""
    boundary = "onepieceboundary5a1c"
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="chunk"; filename="blob"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_a_chunk_that_arrives_whole_gets_the_same_answers(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    # A chunk part that arrives in one piece is checked against its session inside its
    # record's transaction instead of before its bytes are read: every answer must be the
    # one the same request gets when its bytes arrive in pieces (the session checked
    # first), and nothing may stay staged after a refusal.
    settings = settings_factory(max_chunks=100)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        uploads = http._transport.app.state.container.uploads  # type: ignore[attr-defined]
        early_checks = 0
        check_can_receive = uploads.check_can_receive

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal early_checks
            early_checks += 1
            return await check_can_receive(*args, **kwargs)

        uploads.check_can_receive = counted
        open_id, aborted_id = await api.session(), await api.session()
        assert (await api.abort(aborted_id)).status_code == 200
        unknown = "6f1c9d8e-7a55-4c1e-9f4e-0d2b1a3c5e7f"
        data = audio_wav[:1000]
        cases: list[tuple[str, dict[str, str], dict[str, str]]] = [
            ("stored", {"upload_session_id": open_id, "chunk_index": "3"}, api.headers()),
            ("intruder", {"upload_session_id": open_id, "chunk_index": "0"}, api.headers("x")),
            ("unknown", {"upload_session_id": unknown, "chunk_index": "0"}, api.headers()),
            ("aborted", {"upload_session_id": aborted_id, "chunk_index": "0"}, api.headers()),
            ("index", {"upload_session_id": open_id, "chunk_index": "100"}, api.headers()),
            (
                "checksum",
                {"upload_session_id": open_id, "chunk_index": "1", "chunk_sha256": "0" * 64},
                api.headers(),
            ),
            (
                "file id",
                {"upload_session_id": open_id, "chunk_index": "2"},
                api.headers(file_id=7),
            ),
            # A field's own error comes after the session's refusal, in one piece too.
            (
                "intruder, bad index",
                {"upload_session_id": open_id, "chunk_index": "abc"},
                api.headers("x"),
            ),
            (
                "aborted, bad checksum",
                {"upload_session_id": aborted_id, "chunk_index": "0", "chunk_sha256": "xyz"},
                api.headers(),
            ),
        ]
        read_after = {"aborted", "intruder, bad index", "aborted, bad checksum"}
        for name, fields, headers in cases:
            early_checks = 0
            in_pieces = await http.post(
                "/upload/chunk", data=fields, files={"chunk": ("blob", data)}, headers=headers
            )
            assert early_checks == 1, name
            body, content_type = one_piece(fields, data)
            whole = await http.post(
                "/upload/chunk", content=body, headers={**headers, "Content-Type": content_type}
            )
            # The whole chunk's session was not read before its record (a session that
            # is not uploading is read after it, for the precise refusal).
            assert early_checks == (2 if name in read_after else 1), name
            assert (whole.status_code, whole.json()) == (in_pieces.status_code, in_pieces.json())
        statuses = {}
        for name, fields, headers in cases:
            body, content_type = one_piece(fields, data)
            response = await http.post(
                "/upload/chunk", content=body, headers={**headers, "Content-Type": content_type}
            )
            error = response.json().get("error") or {"code": response.json()["status"]}
            statuses[name] = (response.status_code, error["code"])
        assert statuses == {
            "stored": (200, "success"),
            "intruder": (404, "session_not_found"),
            "unknown": (404, "session_not_found"),
            "aborted": (409, "session_not_accepting_chunks"),
            "index": (422, "validation_error"),
            "checksum": (422, "checksum_mismatch"),
            "file id": (403, "forbidden"),
            "intruder, bad index": (404, "session_not_found"),
            "aborted, bad checksum": (409, "session_not_accepting_chunks"),
        }
        status = (await api.status(open_id)).json()["data"]
        assert status["received_chunks"] == [3]
        assert len(staged_files(settings)) == 1


def test_chunk_stored_body_is_what_json_response_renders() -> None:
    """The chunk route fills its body in without a JSON encoder: the same bytes and
    headers as `JSONResponse(success(...))`."""
    for index, size, digest in [
        (0, 0, hashlib.sha256(b"").hexdigest()),
        (7, 1024, hashlib.sha256(b"x").hexdigest()),
        (999_999_999, 64 * 1024 * 1024, "f" * 64),
    ]:
        fast = chunk_stored_response(index, size, digest)
        slow = JSONResponse(
            success(
                "Chunk uploaded successfully.",
                {"chunk_index": index, "size": size, "sha256": digest},
            )
        )
        assert (fast.body, fast.raw_headers, fast.status_code) == (
            slow.body,
            slow.raw_headers,
            slow.status_code,
        )


async def test_an_overlong_boundary_is_422(api: UploadApi, settings: Settings) -> None:
    """python-multipart refuses boundaries over 256 bytes when the parser is built: a
    malformed body (it was a 500), and nothing staged."""
    session_id = await api.session()
    boundary = "b" * 300
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload_session_id"\r\n\r\n'
        f"{session_id}\r\n--{boundary}--\r\n"
    ).encode()
    response = await api.client.post(
        "/upload/chunk",
        content=body,
        headers={**api.headers(), "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 422, "malformed_body")
    assert staged_files(settings) == []
