"""The tus endpoint inside the app (ASGI, no sockets): the webhook names the protocol,
browsers may call it (CORS), and headers it refuses get a clear 4xx."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.errors import SessionNotFound
from app.main import create_app
from app.settings import Settings
from app.storage.resumable import APPEND_LEASE, SqlUploadLocks
from app.storage.staging import DiskChunkWriter, DiskStaging
from app.uploads.models import StagedFile
from app.uploads.ports import Lease
from tests.conftest import running
from tests.notify.receiver import Receiver

SECRET = "tus-notify-secret"
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver(SECRET.encode()).start()
    yield receiver
    await receiver.stop()


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def test_a_tus_upload_is_announced_with_protocol_tus(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    settings = settings_factory(
        main_service_notify_url=receiver.url,
        main_service_notify_secret=SECRET,
        notify_delivery_loop=False,
    )
    headers = {**TUS, "Authorization": f"Bearer {keypair.token('user-5', file_id=6)}"}
    async with running(create_app(settings)) as http:
        # creation-with-upload: the whole file in the POST; file id from the token's claim.
        created = await http.post(
            "/files/",
            content=audio_wav,
            headers={
                **headers,
                "Upload-Length": str(len(audio_wav)),
                "Upload-Metadata": _metadata(filename="memo.wav", filetype="audio/wav"),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert created.status_code == 201, created.text
        assert created.headers["Upload-Offset"] == str(len(audio_wav))
        head = await http.head(created.headers["Location"], headers=headers)
        assert head.headers["X-Upload-State"] == "completed"
    [got] = receiver.requests
    assert got.signature_ok
    assert got.payload["protocol"] == "tus"
    assert got.payload["main_service_file_id"] == 6
    assert got.payload["original_file_name"] == "memo.wav"


async def test_browsers_may_call_the_tus_endpoint(
    settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    origin = "https://app.example.com"
    settings = settings_factory(cors_allow_origins=origin)
    async with running(create_app(settings)) as http:
        preflight = await http.options(
            "/files/0b8a4f3e-51a2-4d7c-8f0e-9c2d1b7a6e55",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization,tus-resumable,upload-offset,"
                "content-type,upload-checksum",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
        created = await http.post(
            "/files/",
            headers={
                **TUS,
                "Origin": origin,
                "Authorization": f"Bearer {keypair.token('user-1')}",
                "Upload-Length": "100",
                "Upload-Metadata": _metadata(filename="a.wav", main_service_file_id="1"),
            },
        )
        assert created.status_code == 201
        exposed = {
            h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")
        }
        assert {
            "location",
            "upload-offset",
            "upload-length",
            "upload-expires",
            "tus-resumable",
        } <= exposed


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"}, 400),
        (
            {
                "Upload-Length": "10",
                "Upload-Metadata": _metadata(filename="a.exe", main_service_file_id="1"),
            },
            422,
        ),
        ({"Upload-Length": "10", "Upload-Concat": "sideways"}, 400),
        ({}, 400),
    ],
)
async def test_bad_creation_headers_get_a_clear_4xx(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    extra: dict[str, str],
    status: int,
) -> None:
    async with running(create_app(settings_factory())) as http:
        response = await http.post(
            "/files/",
            headers={**TUS, "Authorization": f"Bearer {keypair.token('user-1')}", **extra},
        )
        assert response.status_code == status, response.text
        assert response.json()["status"] == "error"
        assert response.headers["Tus-Resumable"] == "1.0.0"


async def test_a_patch_ending_on_a_piece_boundary_releases_its_lease_with_the_record(
    settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    """A PATCH of exactly one part is one whole piece: its record lets the writer lease
    go in the same transaction (no release of its own), and the next writer finds the
    lease free at once."""
    piece = 5 * 1024 * 1024
    settings = settings_factory(s3_part_size_bytes=piece, eager_flush=False)
    headers = {**TUS, "Authorization": f"Bearer {keypair.token('user-5', file_id=6)}"}
    app = create_app(settings)
    async with running(app) as http:
        locks = app.state.container.upload_locks
        released_alone: list[object] = []
        release = locks.release

        async def counted_release(lease: Lease) -> None:
            released_alone.append(lease)
            await release(lease)

        locks.release = counted_release
        created = await http.post(
            "/files/",
            headers={
                **headers,
                "Upload-Length": str(2 * piece + 1),
                "Upload-Metadata": _metadata(filename="memo.wav"),
            },
        )
        assert created.status_code == 201, created.text
        for offset in (0, piece):
            patched = await http.patch(
                created.headers["Location"],
                content=bytes(piece),
                headers={
                    **headers,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            assert patched.status_code == 204, patched.text
            assert patched.headers["Upload-Offset"] == str(offset + piece)
        assert released_alone == []
        session_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        assert await locks.acquire(session_id, ttl_seconds=5) is not None


async def test_a_patch_whose_lease_was_taken_over_leaves_no_file_behind(
    settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    """A writer whose lease another request took over while its body arrived is refused
    (423) by its record, and its piece never reached the session directory: the rename
    into it runs in the record's transaction, after the lease check, so no file is ever
    there without its row (a crash cannot leave one behind either)."""
    settings = settings_factory(eager_flush=False)
    headers = {**TUS, "Authorization": f"Bearer {keypair.token('user-5', file_id=6)}"}
    app = create_app(settings)
    async with running(app) as http:
        container = app.state.container
        locks: SqlUploadLocks = container.upload_locks
        staging: DiskStaging = container.staging
        taken_over: list[Lease] = []
        new_writer = staging.new_writer

        def writer_then_taken_over(**kwargs: Any) -> DiskChunkWriter:
            writer = new_writer(**kwargs)
            finish = writer.finish

            async def finish_then_taken_over() -> StagedFile:
                # The piece is staged; now another request (a replica) takes the lease.
                staged = await finish()
                held = await locks.leases.current(session_id, APPEND_LEASE)
                assert held is not None
                await locks.release(held)
                other = await locks.acquire(session_id, ttl_seconds=5)
                assert other is not None
                taken_over.append(other)
                return staged

            writer.finish = finish_then_taken_over  # type: ignore[method-assign]
            return writer

        removed_from_session: list[str] = []
        remove_chunk = staging.remove_chunk

        async def counted_remove_chunk(session_id: str, file_name: str) -> None:
            removed_from_session.append(file_name)
            await remove_chunk(session_id, file_name)

        created = await http.post(
            "/files/",
            headers={
                **headers,
                "Upload-Length": str(2 * 1024 * 1024),
                "Upload-Metadata": _metadata(filename="memo.wav"),
            },
        )
        assert created.status_code == 201, created.text
        session_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        staging.new_writer = writer_then_taken_over  # type: ignore[method-assign]
        staging.remove_chunk = counted_remove_chunk  # type: ignore[method-assign]
        patched = await http.patch(
            created.headers["Location"],
            content=bytes(1024 * 1024),
            headers={
                **headers,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 423, patched.text
        assert len(taken_over) == 1
        assert removed_from_session == []  # never renamed, so nothing to take back
        session_dir = staging.session_dir(session_id)
        assert not session_dir.exists() or list(session_dir.iterdir()) == []
        assert list(staging.incoming_dir.iterdir()) == []
        assert await container.uploads.store.chunk_totals(session_id) == (0, 0)
        # The new holder still holds it: the refused writer let nothing go.
        assert await locks.acquire(session_id, ttl_seconds=5) is None


def _ietf_create_headers(auth: str) -> dict[str, str]:
    return {
        "Upload-Draft-Interop-Version": "8",
        "Authorization": auth,
        "Upload-Complete": "?0",
        "Upload-Length": "1000",
    }


async def _create_tus_upload(http: Any, headers: dict[str, str], length: int) -> str:
    """POST /files/ for a `memo.wav` of `length` bytes; its URL."""
    created = await http.post(
        "/files/",
        headers={
            **headers,
            "Upload-Length": str(length),
            "Upload-Metadata": _metadata(filename="memo.wav"),
        },
    )
    assert created.status_code == 201, created.text
    return str(created.headers["Location"])


def _session_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        ("an IETF upload patched through tus", 404),
        ("a malformed Upload-Checksum", 400),
        ("the wrong offset", 409),
        ("a tus upload patched through IETF", 404),
    ],
)
async def test_a_patch_refused_after_opening_its_upload_lets_the_lease_go(
    settings_factory: Callable[..., Settings], keypair: KeyPair, refusal: str, status: int
) -> None:
    """An append reads its session and takes the writer lease in one hand-off (SQLite),
    before the refusals that come later in the order (the protocol record, headers read
    after the session, the offset): each of those gives the lease back at once, so the
    client's next request finds the upload free."""
    auth = f"Bearer {keypair.token('user-5', file_id=6)}"
    headers = {**TUS, "Authorization": auth}
    app = create_app(settings_factory(eager_flush=False))
    async with running(app) as http:
        locks: SqlUploadLocks = app.state.container.upload_locks
        if refusal == "an IETF upload patched through tus":
            created = await http.post(
                "/files/", params={"filename": "memo.wav"}, headers=_ietf_create_headers(auth)
            )
            assert created.status_code == 201, created.text
            url = created.headers["Location"]
        else:
            url = await _create_tus_upload(http, headers, 1000)
        session_id = _session_of(url)
        patch_headers = {
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        }
        if refusal == "a malformed Upload-Checksum":
            patch_headers["Upload-Checksum"] = "sha1 !!"
        elif refusal == "the wrong offset":
            patch_headers["Upload-Offset"] = "10"
        elif refusal == "a tus upload patched through IETF":
            patch_headers = {
                "Upload-Draft-Interop-Version": "8",
                "Authorization": auth,
                "Upload-Offset": "0",
                "Upload-Complete": "?0",
                "Content-Type": "application/partial-upload",
            }
        patched = await http.patch(url, content=bytes(100), headers=patch_headers)
        assert patched.status_code == status, patched.text
        assert await locks.acquire(session_id, ttl_seconds=5) is not None


async def test_opening_an_upload_checks_its_session_before_taking_anything(
    settings_factory: Callable[..., Settings], keypair: KeyPair, database: dict[str, Any]
) -> None:
    """`SqlUploadLocks.open` (SQLite): the session checked, the lease taken and the
    totals read under it in one hand-off; a refused check takes nothing, a lease another
    request holds is left to it. On PostgreSQL it declines (None): the caller makes the
    usual separate calls."""
    headers = {**TUS, "Authorization": f"Bearer {keypair.token('user-5', file_id=6)}"}
    app = create_app(settings_factory(eager_flush=False))
    async with running(app) as http:
        container = app.state.container
        locks: SqlUploadLocks = container.upload_locks
        uploads = container.uploads
        url = await _create_tus_upload(http, headers, 1000)
        session_id = _session_of(url)
        patched = await http.patch(
            url,
            content=bytes(300),
            headers={
                **headers,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, patched.text
        owner = await container.verifier.verify(keypair.token("user-5", file_id=6))
        stranger = await container.verifier.verify(keypair.token("user-6", file_id=6))

        def opening(principal: Any) -> Any:
            return locks.open(session_id, ttl_seconds=5, check=uploads.receiving_check(principal))

        if not database["database_url"].startswith("sqlite"):
            assert await opening(owner) is None
            return
        with pytest.raises(SessionNotFound):
            await opening(stranger)
        lapsed = await locks.leases.current(session_id, APPEND_LEASE)
        assert lapsed is not None and lapsed.expires_at.year == 2000  # nothing taken
        opened = await opening(owner)
        assert opened is not None and opened.lease is not None
        assert opened.session.id == session_id and opened.session.total_size == 1000
        assert opened.totals == (1, 300) == await uploads.store.chunk_totals(session_id)
        # Held now: a second opening checks the session and leaves the lease alone.
        again = await opening(owner)
        assert again is not None and again.lease is None and again.totals is None
        holding = await locks.leases.current(session_id, APPEND_LEASE)
        assert holding is not None and holding.holder == opened.lease.holder
        assert holding.generation == opened.lease.generation
        await locks.release(opened.lease)
        with pytest.raises(SessionNotFound):
            await locks.open(
                "0b8a4f3e-51a2-4d7c-8f0e-9c2d1b7a6e55",
                ttl_seconds=5,
                check=uploads.receiving_check(owner),
            )
