"""The janitor never reclaims the temp file of a chunk a live request is still writing
(issue 12): a chunk trickled for longer than the grace period still lands, over HTTP,
against a real service process whose janitor runs every fraction of a second."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import httpx

from app.dev.keys import KeyPair
from app.dev.s3server import LocalS3Server
from tests.hostile import FORM_CONTENT_TYPE, form_end, form_part
from tests.processes import ServiceProcess, make_wav, service_env, staged_files, wait_until

GRACE_SECONDS = 1


def test_a_chunk_trickled_past_the_grace_period_is_kept_and_acknowledged(
    keypair: KeyPair, s3_server: LocalS3Server, tmp_path: Path
) -> None:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    staging = tmp_path / "staging"
    env = service_env(
        keypair,
        s3_server.endpoint_url,
        bucket,
        {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        staging,
        EAGER_FLUSH="false",
        JANITOR_INTERVAL_SECONDS="0.2",
        ORPHAN_GRACE_SECONDS=str(GRACE_SECONDS),
        LOG_LEVEL="INFO",
    )
    service = ServiceProcess(env, tmp_path / "run").start()
    try:
        token = keypair.token("trickler")
        with httpx.Client(base_url=service.url) as http:
            init = http.post(
                "/upload/init",
                json={"main_service_file_id": 3, "original_file_name": "slow.wav"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert init.status_code == 200, init.text
            session_id = init.json()["data"]["upload_session_id"]

        audio = make_wav(tmp_path / "slow.wav", 4)  # ~700 KB: several write blocks
        body = (
            form_part("upload_session_id", session_id.encode())
            + form_part("chunk_index", b"0")
            + form_part("chunk", audio, file_name="slow.wav")
            + form_end()
        )
        head = (
            f"POST /upload/chunk HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {FORM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sent = len(body) // 2
        with socket.create_connection(("127.0.0.1", service.port), timeout=30) as conn:
            conn.sendall(head + body[:sent])

            def staged_after_another_byte() -> list[Path]:
                # Trickling: a byte per poll. The chunk's writer hands a full block to its
                # thread (creating the temp file) once a piece after it arrives; the half
                # body may have come as one piece.
                nonlocal sent
                if sent < len(body) - 1:
                    conn.sendall(body[sent : sent + 1])
                    sent += 1
                return staged_files(staging, "incoming")

            (temp,) = wait_until(
                staged_after_another_byte, timeout_seconds=30, what="the chunk's temp file"
            )
            # The janitor reclaims temp files older than the grace period: wait until
            # this one is, then for several passes that began after that.
            stale_from = temp.stat().st_mtime + GRACE_SECONDS + 0.5
            wait_until(
                lambda: time.time() > stale_from,
                timeout_seconds=30,
                what="the temp file to outlive the grace period",
            )
            passes_before = service.output().count("janitor.pass_finished")
            wait_until(
                lambda: service.output().count("janitor.pass_finished") >= passes_before + 3,
                timeout_seconds=60,
                what="janitor passes over the stale temp file",
            )
            assert temp.exists()
            conn.sendall(body[sent:])
            response = b""
            while b"\r\n\r\n" not in response:
                piece = conn.recv(65536)
                assert piece, response
                response += piece
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        with httpx.Client(base_url=service.url) as http:
            status = http.get(
                f"/upload/{session_id}", headers={"Authorization": f"Bearer {token}"}
            ).json()["data"]
        assert status["received_chunks"] == [0]
        assert status["received_bytes"] == len(audio)
    finally:
        service.stop()
