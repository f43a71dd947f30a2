"""Only real audio is stored: each format completes with its detected Content-Type and
facts; anything else is refused with 415 and nothing is left in the bucket."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.main import create_app
from app.settings import Settings
from tests.audio_factory import make_audio, make_png, missing_encoder
from tests.conftest import running
from tests.support import UploadApi, assert_error, sha256

SECONDS = 4.0

# kind -> (file name, content type, audio_format, codec)
FORMATS = {
    "mp3": ("take.mp3", "audio/mpeg", "mp3", "mp3"),
    "wav": ("take.wav", "audio/wav", "wav", "pcm_s16le"),
    "flac": ("take.flac", "audio/flac", "flac", "flac"),
    "ogg": ("take.ogg", "audio/ogg", "ogg_vorbis", "vorbis"),
    "opus": ("take.opus", "audio/ogg", "ogg_opus", "opus"),
    "m4a": ("take.m4a", "audio/mp4", "m4a", "aac"),
    "aac": ("take.aac", "audio/aac", "aac", "aac"),
    "webm": ("take.webm", "audio/webm", "webm", "opus"),
    "aiff": ("take.aiff", "audio/aiff", "aiff", None),
    "amr": ("take.amr", "audio/amr", "amr", None),
}


def objects_and_uploads(s3: Any, bucket: str) -> tuple[list[Any], list[Any]]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    pending = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return listed, pending


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("formats")


@pytest.mark.parametrize("kind", sorted(FORMATS))
async def test_each_format_completes_with_detected_type_and_facts(
    kind: str, api: UploadApi, s3: Any, settings: Settings, audio_dir: Path
) -> None:
    reason = missing_encoder(kind)
    if reason:
        pytest.skip(reason)
    name, content_type, audio_format, codec = FORMATS[kind]
    path = audio_dir / f"{kind}{Path(name).suffix}"
    if not path.exists():
        make_audio(kind, path, SECONDS)
    data = path.read_bytes()
    response = await api.upload(data, chunk_size=max(len(data) // 3, 1), name=name, shuffle=True)
    assert response.status_code == 200, response.text
    result = response.json()["data"]
    assert result["content_type"] == content_type
    assert result["audio_format"] == audio_format
    if codec is not None:
        assert result["codec"] == codec
    assert result["duration_seconds"] == pytest.approx(SECONDS, rel=0.05)
    assert result["sample_rate"] and result["channels"]
    head = s3.head_object(Bucket=settings.s3_bucket_name, Key=result["key"])
    assert head["ContentType"] == content_type
    assert head["Metadata"]["sha256"] == sha256(data)
    assert head["Metadata"]["audio-format"] == audio_format
    body = s3.get_object(Bucket=settings.s3_bucket_name, Key=result["key"])["Body"].read()
    assert sha256(body) == sha256(data) == result["sha256"]


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("song.mp3", b"not really" * 100)
    return buffer.getvalue()


async def test_fakes_are_refused_and_nothing_is_stored(
    api: UploadApi, s3: Any, settings: Settings, tmp_path: Path, audio_wav: bytes
) -> None:
    fakes = {
        "png": make_png(tmp_path / "image.png").read_bytes(),
        "zip": _zip_bytes(),
        "random": os.urandom(200_000),
        "text": b"Dear diary, today I recorded nothing at all.\n" * 200,
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 50,
    }
    for label, data in fakes.items():
        session_id = await api.session(name=f"{label}.mp3")
        await api.send_all(session_id, [data])
        response = await api.complete(session_id, 1)
        assert_error(response, 415, "unsupported_audio")
        assert "/" not in response.json()["message"] or "audio" in response.json()["message"]
        status = (await api.status(session_id)).json()["data"]
        assert status["state"] == "uploading"
    # Real audio named for another family is refused too (a WAV is no MP3).
    contradiction = await api.upload(audio_wav, chunk_size=len(audio_wav), name="song.mp3")
    assert_error(contradiction, 415, "unsupported_audio")
    assert objects_and_uploads(s3, settings.s3_bucket_name) == ([], [])


async def test_allowed_formats_restrict_what_is_accepted(
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    audio_wav: bytes,
    s3: Any,
    audio_dir: Path,
) -> None:
    settings = settings_factory(allowed_audio_formats="mp3,flac")
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        refused = await api.upload(audio_wav, chunk_size=len(audio_wav), name="voice.wav")
        assert_error(refused, 415, "unsupported_audio")
        flac = make_audio("flac", audio_dir / "allowed.flac", 2.0).read_bytes()
        accepted = await api.upload(flac, chunk_size=len(flac), name="voice.flac")
        assert accepted.status_code == 200, accepted.text
    assert len(objects_and_uploads(s3, settings.s3_bucket_name)[0]) == 1


def test_unknown_allowed_format_stops_start_up(settings_factory: Callable[..., Settings]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown formats"):
        settings_factory(allowed_audio_formats="mp3,mp5")
