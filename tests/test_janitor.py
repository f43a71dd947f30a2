"""One janitor pass at a time, with the clock moved instead of waited for: expiry (410
afterwards), orphan staging files and directories, orphan multipart uploads, released
completions, purging after retention, and replicas running passes at once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from app import janitor
from app.janitor import run_pass
from app.main import create_app
from app.uploads.models import utc_now
from tests.conftest import running
from tests.manual_janitor import settings_factory_without_janitor_loop  # noqa: F401
from tests.processes import service_env, staged_files
from tests.support import UploadApi, assert_error
from tests.tcp_proxy import CuttableProxy

TTL_SECONDS = 3600
GRACE_SECONDS = 600


def _uploads_under(s3, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get(
        "Uploads", []
    )
    return uploads


async def test_one_pass_reclaims_orphans_then_expires_idle_sessions(
    settings_factory, keypair, s3, bucket, audio_wav
):
    settings = settings_factory(
        session_ttl_seconds=TTL_SECONDS,
        orphan_grace_seconds=GRACE_SECONDS,
        completion_lease_seconds=60,
    )
    staging = settings.local_temp_chunk_path
    app = create_app(settings)
    async with running(app) as client:
        api = UploadApi(client, keypair)
        container = app.state.container
        idle = await api.session()
        assert (await api.chunk(idle, 0, audio_wav[:100_000])).status_code == 200
        live = await api.session(file_id=43)
        assert (await api.chunk(live, 0, audio_wav[:50_000])).status_code == 200
        # A completion in progress that named its multipart upload: must be left alone.
        completing = await api.session(file_id=44)
        assert (await api.chunk(completing, 0, audio_wav)).status_code == 200
        now = utc_now()
        assert await container.store.claim_completion(
            completing, now=now, lease_expires_at=now + timedelta(seconds=60)
        )
        live_key = f"uploads/user-1/44/{completing}/voice.wav"
        live_upload = s3.create_multipart_upload(Bucket=bucket, Key=live_key)["UploadId"]
        await container.store.remember_multipart_upload(
            completing, object_key=live_key, upload_id=live_upload
        )
        # What crashes leave behind.
        orphan_upload = s3.create_multipart_upload(Bucket=bucket, Key="uploads/u/1/x/a.wav")
        foreign_upload = s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/a.wav")
        stray_dir = staging / "sessions" / str(uuid.uuid4())
        stray_dir.mkdir(parents=True)
        (stray_dir / "000000.abc.chunk").write_bytes(audio_wav[:1000])
        unrecorded = staging / "sessions" / idle / "000001.dead.chunk"
        unrecorded.write_bytes(audio_wav[:1000])
        (staging / "incoming" / "crashed.part").write_bytes(audio_wav[:1000])

        # Just past the grace: orphans go, every session stays as it was.
        report = await run_pass(container, now=utc_now() + timedelta(seconds=GRACE_SECONDS + 5))
        assert report.aborted_multipart_uploads == 1
        assert report.removed_session_dirs == 1
        assert report.removed_chunk_files == 1
        assert report.removed_incoming_files == 1
        assert report.expired_sessions == 0
        assert not stray_dir.exists()
        assert not unrecorded.exists()
        assert staged_files(staging, "incoming") == []
        remaining = {u["UploadId"] for u in _uploads_under(s3, bucket)}
        assert remaining == {live_upload, foreign_upload["UploadId"]}
        assert orphan_upload["UploadId"] not in remaining
        status = (await api.status(idle)).json()["data"]
        assert (status["state"], status["received_chunks"]) == ("uploading", [0])

        # The completion's lease lapsed long ago (its client vanished): released, and
        # its multipart upload aborted; the client can still retry. Nothing expires yet.
        report = await run_pass(container, now=utc_now() + timedelta(seconds=1000))
        assert (report.released_completions, report.expired_sessions) == (1, 0)
        assert _uploads_under(s3, bucket, "uploads/") == []
        status = (await api.status(completing)).json()["data"]
        assert (status["state"], status["received_chunks"]) == ("uploading", [0])
        done = await api.complete(completing, 1, file_id=44)
        assert done.status_code == 200, done.text

        # Past the TTL: idle sessions expire, their chunks go, later calls get 410.
        later = utc_now() + timedelta(seconds=TTL_SECONDS + 120)
        report = await run_pass(container, now=later)
        assert (report.expired_sessions, report.released_completions) == (2, 0)
        assert not (staging / "sessions" / idle).exists()
        assert not (staging / "sessions" / live).exists()
        assert (await api.status(idle)).json()["data"]["state"] == "expired"
        assert_error(await api.chunk(idle, 1, audio_wav[:1000]), 410, "session_expired")
        assert_error(await api.complete(idle, 1), 410, "session_expired")

        # After the retention period the expired records are purged: 404 from then on.
        purge_at = later + timedelta(seconds=settings.expired_retention_seconds + 60)
        report = await run_pass(container, now=purge_at)
        assert report.purged_sessions == 2
        assert_error(await api.status(idle), 404, "session_not_found")
        assert (await api.status(completing)).json()["data"]["state"] == "completed"


async def test_replicas_running_passes_at_once_do_each_thing_once(
    settings_factory, keypair, audio_wav
):
    settings = settings_factory(session_ttl_seconds=TTL_SECONDS)
    first, second = create_app(settings), create_app(settings)
    async with running(first) as client, running(second):
        api = UploadApi(client, keypair)
        sessions = [await api.session(file_id=100 + n) for n in range(6)]
        for session_id in sessions:
            assert (await api.chunk(session_id, 0, audio_wav[:20_000])).status_code == 200
        later = utc_now() + timedelta(seconds=TTL_SECONDS + 1)
        reports = await asyncio.gather(
            run_pass(first.state.container, now=later),
            run_pass(second.state.container, now=later),
        )
        assert sum(report.expired_sessions for report in reports) == len(sessions)
        for session_id in sessions:
            assert (await api.status(session_id)).json()["data"]["state"] == "expired"
        assert staged_files(settings.local_temp_chunk_path, "sessions") == []


async def test_open_sessions_keep_young_unrecorded_files(settings_factory, keypair, audio_wav):
    """A chunk file renamed into place but not yet recorded must survive a pass."""
    settings = settings_factory(orphan_grace_seconds=GRACE_SECONDS)
    app = create_app(settings)
    async with running(app) as client:
        api = UploadApi(client, keypair)
        session_id = await api.session()
        assert (await api.chunk(session_id, 0, audio_wav[:5000])).status_code == 200
        in_flight = settings.local_temp_chunk_path / "sessions" / session_id / "000001.new.chunk"
        in_flight.write_bytes(b"x" * 100)
        fresh_temp = settings.local_temp_chunk_path / "incoming" / "receiving.part"
        fresh_temp.write_bytes(b"x" * 100)
        report = await run_pass(app.state.container, now=utc_now())
        assert report.removed_chunk_files == 0
        assert report.removed_incoming_files == 0
        assert in_flight.exists()
        assert fresh_temp.exists()


async def test_s3_staging_lists_a_bounded_sample_of_open_sessions_per_pass(
    settings_factory, keypair, s3, s3_server, bucket, audio_wav, monkeypatch
):
    """With S3 staging a pass sends one LIST for the session prefixes plus one per sampled
    open session, not one per open session; repeated passes still reach every session's
    unrecorded object, and recorded chunks stay."""
    sessions, per_pass = 8, 3
    monkeypatch.setattr(janitor, "S3_OPEN_SESSION_LISTINGS_PER_PASS", per_pass)
    monkeypatch.setattr(janitor, "_sampler", random.Random(13))
    lists = b"list-type=2"
    proxy = await CuttableProxy("127.0.0.1", s3_server.port, watch=[lists]).start()
    settings = settings_factory(
        staging_backend="s3",
        s3_endpoint_url=proxy.url,
        session_ttl_seconds=TTL_SECONDS,
        orphan_grace_seconds=GRACE_SECONDS,
    )
    app = create_app(settings)
    try:
        async with running(app) as client:
            api = UploadApi(client, keypair)
            ids = [await api.session(file_id=100 + n) for n in range(sessions)]
            for session_id in ids:
                assert (await api.chunk(session_id, 0, audio_wav[:20_000])).status_code == 200
                s3.put_object(
                    Bucket=bucket, Key=f"staging/{session_id}/1.dead.chunk", Body=b"x" * 100
                )
            now = utc_now() + timedelta(seconds=GRACE_SECONDS + 5)
            before = proxy.seen[lists]
            report = await run_pass(app.state.container, now=now)
            assert proxy.seen[lists] - before == 1 + per_pass
            assert report.removed_chunk_files == per_pass
            removed, passes = per_pass, 1
            while removed < sessions and passes < 40:
                removed += (await run_pass(app.state.container, now=now)).removed_chunk_files
                passes += 1
            assert removed == sessions
            staged = s3.list_objects_v2(Bucket=bucket, Prefix="staging/").get("Contents", [])
            names = sorted(item["Key"].split("/", 2)[1] for item in staged)
            assert names == sorted(ids)  # one recorded chunk each, nothing else
            for session_id in ids:
                status = (await api.status(session_id)).json()["data"]
                assert (status["state"], status["received_chunks"]) == ("uploading", [0])
    finally:
        await proxy.stop()


async def test_expiry_drops_what_eager_flush_kept_in_memory_for_the_session(
    settings_factory, keypair, audio_wav
):
    settings = settings_factory(session_ttl_seconds=TTL_SECONDS, eager_flush=True)
    app = create_app(settings)
    async with running(app) as client:
        eager = app.state.container.uploads.eager
        api = UploadApi(client, keypair)
        session_id = await api.session()
        assert (await api.chunk(session_id, 0, audio_wav[:5000])).status_code == 200
        assert session_id in eager._arrived  # counted towards its next flush pass

        report = await run_pass(
            app.state.container, now=utc_now() + timedelta(seconds=2 * TTL_SECONDS)
        )
        assert report.expired_sessions == 1
        assert session_id not in eager._arrived


def test_admin_command_runs_one_pass(keypair, s3_server, bucket, database, tmp_path):
    staging = tmp_path / "staging"
    stale = staging / "incoming" / "old.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a crash")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    env = service_env(keypair, s3_server.endpoint_url, bucket, database, staging)
    result = subprocess.run(
        [sys.executable, "-m", "app.admin", "janitor", "run"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert report["removed_incoming_files"] == 1
    assert not stale.exists()
