"""The client with hostile surroundings (issue 12): a service URL that would carry the
token in clear over a network, and a symlink planted at the lock file's name."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client.errors import UsageError
from app.client.state import FileIdentity, StateStore
from app.client.uploader import plain_http_warning
from tests.client.cli_runner import cli_env, run_cli


@pytest.mark.parametrize(
    "url",
    [
        "https://uploads.example.com",
        "http://127.0.0.1:8000",
        "http://127.8.9.10:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
    ],
)
def test_https_and_loopback_need_no_flag(url: str) -> None:
    assert plain_http_warning(url, allow_insecure=False) is None


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self) -> None:
        Recorder.seen.append(self.headers.get("Authorization", ""))
        body = b'{"status":"error","message":"down","error":{"code":"storage_unavailable"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def remote_receiver() -> Iterator[str]:
    """A real HTTP server reached over a non-loopback address of this machine."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer((address, 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_plain_http_to_another_host_is_refused_without_insecure(
    remote_receiver: str, tmp_path: Path, audio_wav: bytes
) -> None:
    audio = tmp_path / "talk.wav"
    audio.write_bytes(audio_wav)
    env = cli_env("a-token", tmp_path / "state")
    refused = run_cli(str(audio), "--file-id", "1", "--url", remote_receiver, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "plain http" in refused.stderr
    assert "--insecure" in refused.stderr
    assert Recorder.seen == []  # nothing was sent, the token least of all

    allowed = run_cli(
        str(audio),
        *("--file-id", "1", "--url", remote_receiver, "--insecure", "--retries", "1"),
        env=env,
    )
    assert allowed.returncode == 6, allowed.stderr  # the receiver answers 503
    assert "warning: the token is sent over plain http" in allowed.stderr
    assert Recorder.seen == ["Bearer a-token"]


def test_the_lock_file_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    audio = tmp_path / "talk.wav"
    audio.write_bytes(b"RIFF")
    store = StateStore(tmp_path / "state")
    identity = FileIdentity.of(audio, 1, "http://127.0.0.1:8000")
    store.directory.mkdir(parents=True)
    victim = tmp_path / "elsewhere" / "not-yours"
    (store.directory / f"{identity.key}.lock").symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"), store.lock(identity):
        pass
    assert not victim.exists()
    assert not victim.parent.exists()
    # Without the planted link the lock works, and it is the owner's alone.
    (store.directory / f"{identity.key}.lock").unlink()
    with store.lock(identity):
        lock = store.directory / f"{identity.key}.lock"
        assert lock.is_file() and not lock.is_symlink()
        assert lock.stat().st_mode & 0o077 == 0
