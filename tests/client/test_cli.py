"""The console script as a real process against the real service (uvicorn subprocess)
and the moto S3 server: a ~30 MB WAV end to end, a re-run, and the auth failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from tests.client.cli_runner import cli_env, run_cli
from tests.client.conftest import sha256_of_file, sha256_of_object
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.slow


def test_uploads_a_30_mb_wav_and_a_rerun_sends_nothing(
    service: ServiceProcess, big_wav: Path, keypair: KeyPair, s3: Any, bucket: str, tmp_path: Path
) -> None:
    env = cli_env(keypair.token("user-1"), tmp_path / "state")
    args = [str(big_wav), "--file-id", "31", "--url", service.url, "--chunk-size", "4M"]

    first = run_cli(*args, "--json", env=env)

    assert first.returncode == 0, first.stderr
    result = first.json()
    size_bytes = big_wav.stat().st_size
    assert size_bytes > 30_000_000
    assert result["status"] == "success"
    assert result["size"] == size_bytes
    assert result["sha256"] == sha256_of_file(big_wav)
    assert result["chunks_sent"] == -(-size_bytes // (4 << 20))
    assert result["content_type"].startswith("audio/")
    assert result["bucket"] == bucket
    assert sha256_of_object(s3, bucket, result["key"]) == (result["sha256"], size_bytes)

    again = run_cli(*args, "--quiet", env=env)

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == result["file_path_on_upload_service"]
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == [result["key"]]


def test_progress_bar_shows_bytes_rate_and_name(
    service: ServiceProcess, audio_wav: bytes, keypair: KeyPair, tmp_path: Path
) -> None:
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    env = cli_env(keypair.token("user-1"), tmp_path / "state", COLUMNS="120")

    run = run_cli(str(path), "--file-id", "5", "--url", service.url, "--chunk-size", "64k", env=env)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("http")
    assert "KiB" in run.stderr  # bytes done / total
    assert "/s" in run.stderr  # rate
    assert "Uploaded chime.wav" in run.stderr


def test_bad_token_is_a_clear_auth_failure_with_exit_code_3(
    service: ServiceProcess, audio_wav: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    stranger = KeyPair.generate().token("user-1")  # well formed, signed by the wrong key
    args = [str(path), "--file-id", "5", "--url", service.url]

    plain = run_cli(*args, env=cli_env(stranger, tmp_path / "state"))
    as_json = run_cli(*args, "--json", env=cli_env("not-a-jwt", tmp_path / "state"))

    assert plain.returncode == 3
    assert "error:" in plain.stderr
    assert "invalid_token" in plain.stderr
    assert "token" in plain.stderr.lower()
    assert as_json.returncode == 3
    body = as_json.json()
    assert body["status"] == "error"
    assert body["exit_code"] == 3
    assert body["error"]["kind"] == "AuthError"
    assert body["error"]["http_status"] == 401
    assert body["error"]["code"] == "invalid_token"


def test_token_comes_from_a_file_and_a_missing_one_is_a_usage_error(
    service: ServiceProcess, audio_wav: bytes, keypair: KeyPair, tmp_path: Path
) -> None:
    path = tmp_path / "chime.wav"
    path.write_bytes(audio_wav)
    token_file = tmp_path / "token"
    token_file.write_text(keypair.token("user-1") + "\n")
    args = [str(path), "--file-id", "5", "--url", service.url]

    missing = run_cli(*args, env=cli_env(None, tmp_path / "state"))
    from_file = run_cli(
        *args, "--token-file", str(token_file), "-q", env=cli_env(None, tmp_path / "state")
    )
    on_command_line = run_cli(
        *args, "--token", "abc", "--restart", env=cli_env(None, tmp_path / "state")
    )

    assert missing.returncode == 2
    assert "AUDIO_UPLOAD_TOKEN" in missing.stderr
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.strip().startswith(service.url.split(":")[0])
    assert "process list" in on_command_line.stderr
    assert on_command_line.returncode == 3


def test_a_file_the_service_refuses_exits_4_without_retrying(
    service: ServiceProcess, keypair: KeyPair, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio")

    run = run_cli(
        str(notes),
        "--file-id",
        "5",
        "--url",
        service.url,
        "--json",
        env=cli_env(keypair.token("user-1"), tmp_path / "state"),
    )

    assert run.returncode == 4, run.stderr
    assert run.json()["error"]["code"] == "validation_error"
    assert "attempts" not in run.stderr
