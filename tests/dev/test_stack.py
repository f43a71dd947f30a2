"""`./scripts/dev` (app.dev.stack) run for real: an upload through it is announced to the
stand-in main service, which prints the verified event in the stack's output, so the
complete response's "main service notified" is true; start-up prints no alembic noise;
stopping the stack stops the stand-in too."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.dev.s3server import free_port
from tests.processes import refuses_connections, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dev_stack_notifies_its_stand_in_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    output = tmp_path / "output.txt"
    with output.open("wb") as sink:
        stack = subprocess.Popen(
            [sys.executable, "-m", "app.dev.stack", "--port", str(port), "--state-dir", str(state)],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: stack.poll() is not None or _up(url), timeout_seconds=120, what="up")
        assert stack.poll() is None, output.read_text()
        token = (state / "token").read_text()
        sample = (state / "sample.wav").read_bytes()
        headers = {"Authorization": f"Bearer {token}"}
        init = httpx.post(
            f"{url}/upload/init",
            headers=headers,
            json={"main_service_file_id": 1, "original_file_name": "sample.wav"},
            timeout=30,
        )
        session_id = init.json()["data"]["upload_session_id"]
        chunk = httpx.post(
            f"{url}/upload/chunk",
            headers=headers,
            data={"upload_session_id": session_id, "chunk_index": "0"},
            files={"chunk": ("sample.wav", sample)},
            timeout=30,
        )
        assert chunk.status_code == 200, chunk.text
        done = httpx.post(
            f"{url}/upload/complete",
            headers=headers,
            json={"upload_session_id": session_id, "total_chunks": 1, "main_service_file_id": 1},
            timeout=60,
        )
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["message"] == "File upload completed and main service notified."
        key = body["data"]["key"]
        line = wait_until(
            lambda: next(
                (ln for ln in output.read_text().splitlines() if "webhook verified" in ln), None
            ),
            timeout_seconds=30,
            what="the stand-in to print the event",
        )
        assert f"key={key}" in line
        assert f"sha256={hashlib.sha256(sample).hexdigest()}" in line
        printed = output.read_text()
        webhook_url = next(ln for ln in printed.splitlines() if ln.strip().startswith("Webhooks:"))
        receiver_port = int(webhook_url.split("http://127.0.0.1:")[1].split("/")[0])
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(timeout=60)
    for noise in ("setup plugin", "Context impl", "Will assume", "Running upgrade"):
        assert noise not in printed
    # The stand-in went with the stack.
    wait_until(
        lambda: refuses_connections(receiver_port), timeout_seconds=20, what="the stand-in to stop"
    )
