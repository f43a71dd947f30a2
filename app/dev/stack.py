"""`./scripts/dev`: the whole service on one machine with nothing external.

Starts a local S3 server (moto) on loopback with a bucket, keeps a SQLite database and
the staging directory under `.dev/`, makes a development RSA key pair, then runs the
service and prints a ready token and the commands that upload a first file.

The main service is played by the webhook stand-in (`app.dev.webhook_receiver`) on
loopback, with a secret generated for this run: the service really signs and sends each
`upload.completed` event, the stand-in verifies it and prints it in this output, so the
complete response's "main service notified" is true here as it is in production.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import shlex
import struct
import wave
from pathlib import Path

import uvicorn

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair, write_private_file
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from app.dev.webhook_receiver import ReceiverProcess
from app.main import create_app
from app.settings import Settings

DEV_BUCKET = "audio-uploads"


def write_sample_wav(path: Path, seconds: float = 2.0, rate: int = 22050) -> Path:
    """A real, tiny audio file to upload: a two-tone chime as 16-bit mono PCM."""
    frames = bytearray()
    for n in range(int(seconds * rate)):
        t = n / rate
        fade = min(1.0, (seconds - t) * 4)
        value = 0.3 * fade * (math.sin(2 * math.pi * 523.25 * t) + math.sin(2 * math.pi * 784 * t))
        frames += struct.pack("<h", int(value * 32767 / 2))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def first_upload_instructions(base_url: str, token_path: Path, sample: Path) -> str:
    q = shlex.quote
    auth = '-H "Authorization: Bearer $TOKEN"'
    extract = (
        'python3 -c \'import json,sys; print(json.load(sys.stdin)["data"]["upload_session_id"])\''
    )
    return f"""
Upload a first file (in another terminal, from this folder):

  TOKEN=$(cat {q(str(token_path))})
  SESSION=$(curl -s -X POST {base_url}/upload/init {auth} \\
      -H 'Content-Type: application/json' \\
      -d '{{"main_service_file_id": 1, "original_file_name": "sample.wav"}}' | {extract})
  curl -s -X POST {base_url}/upload/chunk {auth} \\
      -F upload_session_id=$SESSION -F chunk_index=0 -F chunk=@{q(str(sample))}
  curl -s -X POST {base_url}/upload/complete {auth} \\
      -H 'Content-Type: application/json' \\
      -d '{{"upload_session_id": "'$SESSION'", "total_chunks": 1, "main_service_file_id": 1}}'

Or with the bundled client (chunks in parallel, resumable, with a progress bar):

  AUDIO_UPLOAD_TOKEN=$TOKEN .venv/bin/audio-upload {q(str(sample))} --file-id 1 --url {base_url}
"""


def _shown(path: Path) -> Path:
    """Relative to the current folder when inside it: shorter commands to copy."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=os.environ.get("DEV_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEV_PORT", "8000")))
    parser.add_argument("--state-dir", type=Path, default=Path(".dev"))
    args = parser.parse_args()

    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    keys = KeyPair.load_or_create(state / "keys")
    token_path = state / "token"
    write_private_file(token_path, keys.token("dev-user", ttl_seconds=7 * 24 * 3600))
    sample = write_sample_wav(state / "sample.wav")

    s3 = LocalS3Server().start()
    receiver: ReceiverProcess | None = None
    try:
        s3.create_bucket(DEV_BUCKET)
        receiver = ReceiverProcess(secrets.token_hex(32)).start()
        settings = Settings(
            _env_file=None,
            main_service_jwt_public_key=keys.public_pem,
            expected_jwt_issuer=DEV_ISSUER,
            expected_jwt_audience=DEV_AUDIENCE,
            s3_bucket_name=DEV_BUCKET,
            s3_endpoint_url=s3.endpoint_url,
            s3_access_key=DEV_ACCESS_KEY,
            s3_secret_key=DEV_SECRET_KEY,
            local_temp_chunk_path=state / "staging",
            main_service_notify_url=receiver.url,
            main_service_notify_secret=receiver.secret,
        )
        base_url = f"http://{args.host}:{args.port}"
        print(
            f"""
Audio upload service (development)
  API:            {base_url}   (docs: {base_url}/docs)
  Uploader page:  {base_url}/uploader#token={token_path.read_text()}
  S3 (moto):      {s3.endpoint_url}  bucket {DEV_BUCKET}  (in memory: gone when this stops)
  Database:       {settings.resolved_database_url}
  Webhooks:       {receiver.url}  (main-service stand-in: prints each verified event)
  Public key:     {state / "keys" / "jwt-public.pem"}
  Token (7 days): {token_path}  (sub "dev-user", iss "{DEV_ISSUER}", aud "{DEV_AUDIENCE}")
{first_upload_instructions(base_url, _shown(token_path), _shown(sample))}
Stop with Ctrl-C.
""",
            flush=True,
        )
        app = create_app(settings)
        # Alembic's INFO lines (context set-up, each revision applied) are start-up noise
        # here; a failed migration still stops start-up with its error.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if receiver is not None:
            receiver.stop()
        s3.stop()


if __name__ == "__main__":
    main()
