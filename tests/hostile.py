"""Helpers for the hostile-input tests: what a request cost the service process, read
from /proc (CPU-seconds, resident memory), and multipart bodies built by hand so that a
test can send any field in any number and order."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BOUNDARY = "hostile7f3a"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_bytes(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of the process."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


@dataclass(frozen=True)
class Cost:
    cpu_seconds: float
    rss_growth_bytes: int
    peak_growth_bytes: int

    def __str__(self) -> str:
        return (
            f"{self.cpu_seconds:.2f} CPU-s, RSS +{self.rss_growth_bytes / 1e6:.1f} MB, "
            f"peak +{self.peak_growth_bytes / 1e6:.1f} MB"
        )


class CostMeter:
    """What the process spent between `start()` and `stop()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = 0.0
        self._rss = 0
        self._peak = 0

    def start(self) -> CostMeter:
        self._cpu = cpu_seconds(self.pid)
        self._rss, self._peak = memory_bytes(self.pid)
        return self

    def stop(self) -> Cost:
        rss, peak = memory_bytes(self.pid)
        return Cost(cpu_seconds(self.pid) - self._cpu, rss - self._rss, peak - self._peak)


def form_part(name: str, value: bytes, *, file_name: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if file_name is not None:
        disposition += f'; filename="{file_name}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if file_name is not None:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def form_end() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def form_body(parts: Iterable[bytes]) -> bytes:
    return b"".join(parts) + form_end()


def streamed_form(parts: Iterable[bytes], *, piece_bytes: int = 64 * 1024) -> Iterator[bytes]:
    """The same body as an iterator of pieces: httpx sends it without Content-Length
    (Transfer-Encoding: chunked)."""
    pending: list[bytes] = []
    size = 0
    for part in parts:
        pending.append(part)
        size += len(part)
        if size >= piece_bytes:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(form_end())
    yield b"".join(pending)


FORM_CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def raw_exchange(port: int, request: bytes, *, timeout_seconds: float = 20.0) -> tuple[int, bytes]:
    """Send `request` as it is (head, and whatever part of a body) on a fresh connection,
    leave the connection open, and read one response: (status, body). The timeout only
    guards against a hang; what a test asserts is the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_seconds) as conn:
        conn.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            piece = conn.recv(65536)
            if not piece:
                raise ConnectionError(f"closed before a response: {received!r}")
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            piece = conn.recv(65536)
            if not piece:
                break
            body += piece
        return status, body
