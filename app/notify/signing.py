"""Webhook body encoding and the `X-Upload-Signature` header.

The signature is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`:
the timestamp is signed with the body so a captured request cannot be replayed later
with a fresh `t`. `verify_signature` is what a receiver runs (the tests use it too).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNATURE_HEADER = "X-Upload-Signature"
EVENT_ID_HEADER = "X-Upload-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and stored): compact, key order kept, UTF-8, strict (NaN or
    Infinity raise here: strict receivers reject them, so every retry would fail)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signature_header(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: bytes,
    body: bytes,
    header: str,
    *,
    now_unix: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if `header` signs `body` with `secret` and its timestamp is recent enough."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now_unix - timestamp) > tolerance_seconds:
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))
