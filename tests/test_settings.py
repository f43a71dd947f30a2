"""Configuration: safe defaults, clear one-line errors, the seed's names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.dev.keys import KeyPair
from app.settings import Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def _required(keypair: KeyPair) -> dict[str, Any]:
    return {
        "main_service_jwt_public_key": keypair.public_pem,
        "expected_jwt_issuer": "i",
        "expected_jwt_audience": "a",
        "s3_bucket_name": "bucket",
    }


def test_pem_with_escaped_newlines_is_accepted(keypair: KeyPair) -> None:
    values = _required(keypair)
    values["main_service_jwt_public_key"] = keypair.public_pem.replace("\n", "\\n")
    settings = Settings(_env_file=None, **values)
    assert settings.main_service_jwt_public_key is not None
    assert "\n" in settings.main_service_jwt_public_key.get_secret_value()


def test_defaults(keypair: KeyPair) -> None:
    settings = Settings(_env_file=None, **_required(keypair))
    assert settings.jwt_algorithm == "RS256"
    assert settings.jwt_leeway_seconds == 30
    assert settings.session_ttl_seconds == 24 * 3600
    assert {
        "mp3",
        "wav",
        "flac",
        "ogg",
        "oga",
        "opus",
        "m4a",
        "aac",
        "webm",
        "aiff",
        "aif",
        "amr",
    } <= settings.allowed_audio_extensions
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize("algorithm", ["HS256", "none", "HS512"])
def test_symmetric_algorithms_are_refused(keypair: KeyPair, algorithm: str) -> None:
    with pytest.raises(SettingsError, match="JWT_ALGORITHM"):
        load_settings(_env_file=None, jwt_algorithm=algorithm, **_required(keypair))


def test_prefix_and_extensions_are_normalised(keypair: KeyPair) -> None:
    settings = Settings(
        _env_file=None,
        s3_key_prefix="/audio/in/",
        allowed_audio_extensions=" MP3, .wav ,",
        **_required(keypair),
    )
    assert settings.s3_key_prefix == "audio/in"
    assert settings.allowed_audio_extensions == frozenset({"mp3", "wav"})


def test_missing_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("S3_", "EXPECTED_", "MAIN_SERVICE", "JWT_"))
    }
    env.update(
        {
            "EXPECTED_JWT_ISSUER": "i",
            "EXPECTED_JWT_AUDIENCE": "a",
            "MAIN_SERVICE_JWT_PUBLIC_KEY": KeyPair.generate().public_pem,
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "S3_BUCKET_NAME" in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "S3_BUCKET_NAME" in line]
    assert len(lines) == 1


def test_unreadable_public_key_is_named(keypair: KeyPair) -> None:
    from app.container import build_verifier

    values = _required(keypair)
    values["main_service_jwt_public_key"] = (
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"
    )
    settings = Settings(_env_file=None, **values)
    with pytest.raises(SettingsError, match="MAIN_SERVICE_JWT_PUBLIC_KEY"):
        build_verifier(settings)


def test_env_file_made_from_the_example_works(
    keypair: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's set-up: copy .env.example to .env, fill in the key; blanks mean defaults."""
    example = (REPO / ".env.example").read_text()
    pem = keypair.public_pem.replace("\n", "\\n")
    lines = []
    for line in example.splitlines():
        if line.startswith("MAIN_SERVICE_JWT_PUBLIC_KEY="):
            line = f'MAIN_SERVICE_JWT_PUBLIC_KEY="{pem}"'
        lines.append(line)
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    for name in list(os.environ):
        if name.startswith(("S3_", "EXPECTED_", "MAIN_SERVICE", "JWT_", "DATABASE", "MAX_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.s3_bucket_name == "audio-uploads"
    assert settings.s3_access_key is None and settings.s3_endpoint_url is None
    assert settings.database_url is None and settings.database_schema is None
    assert settings.main_service_notify_url is None
    assert "mp3" in settings.allowed_audio_extensions
    assert settings.allowed_audio_formats >= {"mp3", "wav", "flac"}
    from app.container import build_verifier

    build_verifier(settings)  # the key from .env is readable


def test_cors_origins_are_split_and_empty_means_off(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(cors_allow_origins=" https://a.example/, ,https://b.example ")
    assert settings.cors_allow_origins == ("https://a.example", "https://b.example")
    assert settings_factory(cors_allow_origins="").cors_allow_origins == ()
    assert settings_factory().cors_allow_origins == ()
    assert settings_factory().forwarded_allow_ips == "127.0.0.1"


def test_part_size_must_be_whole_sha256_blocks(keypair: KeyPair) -> None:
    # The file's hash state is saved after each part only at a 64-byte boundary.
    with pytest.raises(SettingsError, match="S3_PART_SIZE_BYTES"):
        load_settings(_env_file=None, s3_part_size_bytes=5 * 2**20 + 1, **_required(keypair))
    settings = load_settings(_env_file=None, s3_part_size_bytes=6_000_000, **_required(keypair))
    assert settings.s3_part_size_bytes == 6_000_000
