"""Child processes of the dev stack and the tests: started on loopback, dying with their
parent, and ready once they answer HTTP."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import socket
import subprocess
import time

import httpx

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, even by a
    signal that skips clean-up (uvicorn re-raises SIGTERM after its own shutdown)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # elsewhere the caller's own clean-up has to do


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(
    process: subprocess.Popen[bytes], url: str, *, name: str, timeout_seconds: float
) -> None:
    """Polls `url` until the child answers; stops it and raises if it exits or the
    deadline passes first."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {name} exited at start-up")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # polling a child's socket, with the deadline above
    stop(process)
    raise RuntimeError(f"the {name} did not start in time")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after ten seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
