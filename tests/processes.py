"""The service as a real uvicorn process, and a raw-socket client that can stop
mid-body: for crash (kill -9), shutdown (SIGTERM) and stalled-client tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY


def service_env(
    keypair: KeyPair,
    endpoint_url: str,
    bucket: str,
    database: dict[str, Any],
    staging: Path,
    **overrides: object,
) -> dict[str, str]:
    env = {
        "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
        "EXPECTED_JWT_ISSUER": DEV_ISSUER,
        "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
        "S3_BUCKET_NAME": bucket,
        "S3_ENDPOINT_URL": endpoint_url,
        "S3_ACCESS_KEY": DEV_ACCESS_KEY,
        "S3_SECRET_KEY": DEV_SECRET_KEY,
        "LOCAL_TEMP_CHUNK_PATH": str(staging),
        "LOG_LEVEL": "WARNING",
        **{key.upper(): str(value) for key, value in database.items()},
    }
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    return env


def wait_until(condition: Callable[[], Any], *, timeout_seconds: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    def __init__(self, env: dict[str, str], workdir: Path, *, grace_seconds: int = 30) -> None:
        self.env = env
        self.workdir = workdir
        self.grace_seconds = grace_seconds
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self.port = _free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"service-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--timeout-graceful-shutdown",
                str(self.grace_seconds),
                "--log-level",
                "warning",
            ],
            # The working folder holds no .env: only the settings given here apply.
            cwd=self.workdir,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._ready, timeout_seconds=60, what="the service to start")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the service exited at start-up:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return (self.workdir / f"service-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown code runs at all."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_seconds: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_seconds)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


def chunk_request(
    host: str, token: str, session_id: str, index: int, data: bytes
) -> tuple[bytes, bytes]:
    """The head and body of a `POST /upload/chunk`, to send piece by piece."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="upload_session_id"\r\n\r\n'
            f"{session_id}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="chunk_index"\r\n\r\n'
            f"{index}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="chunk"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /upload/chunk HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


def read_response(sock: socket.socket, timeout_seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline)."""
    sock.settimeout(timeout_seconds)
    received = bytearray()
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
        if b"\r\n\r\n" in received:
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                declared = line.lower().startswith(b"content-length:")
                if declared and len(rest) >= int(line.split(b":", 1)[1]):
                    return bytes(received)
    return bytes(received)


def refuses_connections(port: int) -> bool:
    """True once nothing listens on 127.0.0.1:`port` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued on the listening socket just as it closed: not proof yet, ask again.
        return False
    return False


def staged_files(staging: Path, folder: str) -> list[Path]:
    root = staging / folder
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def make_wav(path: Path, seconds: float) -> bytes:
    """Real audio of about `seconds` (44.1 kHz stereo, 176 KB a second), made with sox."""
    subprocess.run(
        [
            *("sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(path)),
            *("synth", str(seconds), "sine", "300-900"),
        ],
        check=True,
    )
    return path.read_bytes()


class HoldingProxy:
    """A loopback TCP proxy that stops forwarding a connection at the first request
    containing `pattern` (e.g. S3's `partNumber=`), until released: a completion
    frozen mid-way, for a kill -9 at a known moment."""

    def __init__(self, target_url: str, pattern: bytes) -> None:
        parsed = httpx.URL(target_url)
        self.target = (parsed.host, parsed.port or 80)
        self.pattern = pattern
        self.held = 0
        self.release = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            return
        back = threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True)
        back.start()
        self._pump(client, upstream, True)
        back.join(timeout=5)

    def _pump(self, source: socket.socket, target: socket.socket, inspect: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if inspect and not self.release.is_set() and self.pattern in tail + data:
                    self.held += 1
                    self.release.wait()
                    return
                target.sendall(data)
                tail = data[-256:]
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
