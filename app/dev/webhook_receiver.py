"""A stand-in for the main service's webhook endpoint: verifies and prints signed events.

Used wherever no real main service exists: the dev stack (`./scripts/dev`, on loopback
with a generated secret), `deploy/compose.yaml` and the container test. It does what
the README asks of a real receiver: the signature is checked over the raw body with
`app.notify.signing.verify_signature` before anything is parsed (a bad or stale one is
answered 401, so the service retries and the failure shows), and events are deduped on
`event_id` (a repeat is answered 204 again, but printed and kept only once).

Each verified event is printed as one line on stdout, and `GET /events` returns them as
JSON, so a test in another process (or container) can see what arrived. Only for
development and tests: events live in memory.

Run alone: `WEBHOOK_SECRET=... python -m app.dev.webhook_receiver --port 9000`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from app.dev.child import die_with_parent, free_port, stop, wait_until_answering
from app.notify.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature

SECRET_ENV = "WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
HOOK_PATH = "/hooks/uploads"
EVENTS_PATH = "/events"
# A webhook body is a small JSON object; anything far larger is not one of ours.
MAX_BODY_BYTES = 1 << 20

Scope = MutableMapping[str, Any]


@dataclass
class WebhookReceiver:
    """The ASGI app. `events` holds each verified event's payload once, in arrival order."""

    secret: bytes
    out: TextIO | None = None
    tolerance_seconds: int = 300
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    _seen: set[str] = field(default_factory=set)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == EVENTS_PATH:
            body = json.dumps(self.events).encode()
            await _respond(send, 200, body, b"application/json")
        elif method == "GET" and path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', b"application/json")
        elif method == "POST" and path == HOOK_PATH:
            raw = await _read_body(receive)
            if raw is None:
                await _respond(send, 413, b"")
                return
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            await _respond(send, self.accept(raw, headers), b"")
        else:
            await _respond(send, 404, b"")

    def accept(self, raw: bytes, headers: dict[str, str]) -> int:
        """The status to answer for one delivery: 204 verified (new or repeat), 401 not,
        400 signed but not a JSON object with an `event_id`."""
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        ok = verify_signature(
            self.secret,
            raw,
            signature,
            now_unix=time.time(),
            tolerance_seconds=self.tolerance_seconds,
        )
        if not ok:
            self.refused += 1
            self._print(f"webhook REFUSED: bad or stale signature ({len(raw)} bytes)")
            return 401
        try:
            payload = json.loads(raw)
            event_id = str(payload["event_id"])
        except (ValueError, TypeError, KeyError):
            return 400
        if headers.get(EVENT_ID_HEADER.lower(), event_id) != event_id:
            return 400
        if event_id in self._seen:
            return 204
        self._seen.add(event_id)
        self.events.append(payload)
        self._print(describe(payload))
        return 204

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)


def describe(payload: dict[str, Any]) -> str:
    """One line per verified event, for a person watching the dev stack or compose logs."""
    fields = ("main_service_file_id", "user_id", "key", "size", "sha256", "content_type")
    shown = " ".join(f"{name}={payload.get(name)}" for name in fields if name in payload)
    event = payload.get("event", "?")
    return f"webhook verified: {event} event_id={payload.get('event_id')} {shown}"


async def _read_body(receive: Any) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body"):
            return bytes(body)


async def _respond(
    send: Any, status: int, body: bytes, content_type: bytes = b"text/plain"
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass
class ReceiverProcess:
    """The receiver as a child process on loopback, its lines going to our stdout (the
    dev stack runs it so; it dies with its parent)."""

    secret: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def start(self, *, timeout_seconds: float = 30.0) -> ReceiverProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.dev.webhook_receiver", "--port", str(self.port)],
            env={**os.environ, SECRET_ENV: self.secret},
            preexec_fn=die_with_parent,
        )
        try:
            wait_until_answering(
                self.process,
                f"http://127.0.0.1:{self.port}/healthz",
                name="webhook receiver",
                timeout_seconds=timeout_seconds,
            )
        finally:
            if self.process.poll() is not None:
                self.process = None
        return self

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = httpx.get(
            f"http://127.0.0.1:{self.port}{EVENTS_PATH}", timeout=5
        ).json()
        return events

    def stop(self) -> None:
        stop(self.process)
        self.process = None


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        parser.exit(2, f"{SECRET_ENV} must be set (the service's MAIN_SERVICE_NOTIFY_SECRET)\n")
    receiver = WebhookReceiver(secret.encode(), out=sys.stdout)
    print(
        f"webhook receiver listening on http://{args.host}:{args.port}{HOOK_PATH}",
        file=sys.stdout,
        flush=True,
    )
    uvicorn.run(receiver, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
