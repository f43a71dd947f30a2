"""The webhook stand-in verifies signatures the way a real receiver must (README): over
the raw body, refusing bad and stale ones, deduping on event_id."""

from __future__ import annotations

import io
import json
import time

import httpx

from app.dev.webhook_receiver import HOOK_PATH, WebhookReceiver
from app.notify.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, encode_body, signature_header

SECRET = b"shared-secret"


def _event(event_id: str = "e-1") -> bytes:
    return encode_body(
        {"event_id": event_id, "event": "upload.completed", "key": "uploads/u/1/s/a.wav"}
    )


def _headers(body: bytes, *, secret: bytes = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if at is None else at)
    return {
        SIGNATURE_HEADER: signature_header(secret, body, timestamp),
        EVENT_ID_HEADER: json.loads(body)["event_id"],
        "Content-Type": "application/json",
    }


def _client(receiver: WebhookReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url="http://hook")


async def test_a_signed_event_is_printed_once_and_listed() -> None:
    out = io.StringIO()
    receiver = WebhookReceiver(SECRET, out=out)
    body = _event()
    async with _client(receiver) as http:
        first = await http.post(HOOK_PATH, content=body, headers=_headers(body))
        repeat = await http.post(HOOK_PATH, content=body, headers=_headers(body))
        listed = (await http.get("/events")).json()
    assert (first.status_code, repeat.status_code) == (204, 204)
    assert listed == [json.loads(body)]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("webhook verified: upload.completed event_id=e-1")
    assert "key=uploads/u/1/s/a.wav" in lines[0]


async def test_bad_stale_and_unsigned_deliveries_are_refused() -> None:
    out = io.StringIO()
    receiver = WebhookReceiver(SECRET, out=out)
    body = _event()
    async with _client(receiver) as http:
        wrong_secret = await http.post(
            HOOK_PATH, content=body, headers=_headers(body, secret=b"other")
        )
        stale = await http.post(
            HOOK_PATH, content=body, headers=_headers(body, at=time.time() - 3600)
        )
        tampered = await http.post(HOOK_PATH, content=body + b" ", headers=_headers(body))
        unsigned = await http.post(HOOK_PATH, content=body)
        listed = (await http.get("/events")).json()
    assert [r.status_code for r in (wrong_secret, stale, tampered, unsigned)] == [401] * 4
    assert receiver.refused == 4
    assert listed == []
    assert out.getvalue().count("webhook REFUSED") == 4


async def test_a_signed_body_that_is_no_event_is_a_400() -> None:
    receiver = WebhookReceiver(SECRET)
    body = b"[1, 2]"
    headers = {SIGNATURE_HEADER: signature_header(SECRET, body, int(time.time()))}
    async with _client(receiver) as http:
        response = await http.post(HOOK_PATH, content=body, headers=headers)
        missing = await http.get("/nothing")
    assert response.status_code == 400
    assert missing.status_code == 404
    assert receiver.events == []
