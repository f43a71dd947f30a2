"""GET and DELETE /upload/{id}."""

from __future__ import annotations

from typing import Any

from app.settings import Settings
from tests.support import UploadApi, assert_error, split


async def test_status_reports_progress_for_resuming(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session(file_id=9, name="memo.wav")
    chunks = split(audio_wav, 100_000)
    for index in (4, 1):
        assert (await api.chunk(session_id, index, chunks[index])).status_code == 200
    body = (await api.status(session_id)).json()
    assert body["status"] == "success"
    data = body["data"]
    assert data["upload_session_id"] == session_id
    assert data["state"] == "uploading"
    assert data["main_service_file_id"] == 9
    assert data["original_file_name"] == "memo.wav"
    assert data["received_chunks"] == [1, 4]
    assert data["received_bytes"] == len(chunks[1]) + len(chunks[4])
    assert "expires_at" in data
    assert "result" not in data


async def test_status_after_completion_has_the_result(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session()
    await api.send_all(session_id, [audio_wav])
    completed = (await api.complete(session_id, 1)).json()["data"]
    data = (await api.status(session_id)).json()["data"]
    assert data["state"] == "completed"
    assert data["result"] == completed


async def test_other_user_and_unknown_ids_are_404(api: UploadApi) -> None:
    session_id = await api.session()
    assert_error(await api.status(session_id, sub="intruder"), 404, "session_not_found")
    assert_error(await api.abort(session_id, sub="intruder"), 404, "session_not_found")
    assert_error(await api.status("not-a-uuid"), 404, "session_not_found")
    assert (await api.status(session_id)).json()["data"]["state"] == "uploading"


async def test_abort_deletes_staged_data(
    api: UploadApi, audio_wav: bytes, settings: Settings
) -> None:
    session_id = await api.session()
    await api.send_all(session_id, split(audio_wav, 100_000))
    session_dir = settings.local_temp_chunk_path / "sessions" / session_id
    assert any(session_dir.iterdir())
    response = await api.abort(session_id)
    assert response.status_code == 200
    assert response.json()["data"]["state"] == "aborted"
    assert not session_dir.exists()
    assert (await api.status(session_id)).json()["data"]["state"] == "aborted"
    assert (await api.abort(session_id)).status_code == 200  # idempotent
    assert_error(await api.complete(session_id, 6), 409, "session_not_completable")


async def test_completed_upload_cannot_be_aborted(
    api: UploadApi, audio_wav: bytes, s3: Any, settings: Settings
) -> None:
    session_id = await api.session()
    await api.send_all(session_id, [audio_wav])
    key = (await api.complete(session_id, 1)).json()["data"]["key"]
    assert_error(await api.abort(session_id), 409, "session_not_completable")
    assert s3.head_object(Bucket=settings.s3_bucket_name, Key=key)["ContentLength"] > 0
