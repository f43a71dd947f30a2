"""The signature a receiver checks: HMAC-SHA256 over "<t>.<raw body>"."""

from __future__ import annotations

import hashlib
import hmac

from app.notify.signing import encode_body, signature_header, verify_signature

SECRET = b"shared-secret"
BODY = encode_body({"event_id": "e-1", "event": "upload.completed", "size": 3})


def test_header_is_the_documented_hmac() -> None:
    header = signature_header(SECRET, BODY, 1_700_000_000)
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verification_accepts_the_real_signature_and_nothing_else() -> None:
    header = signature_header(SECRET, BODY, 1_700_000_000)
    assert verify_signature(SECRET, BODY, header, now_unix=1_700_000_010)
    assert not verify_signature(b"other-secret", BODY, header, now_unix=1_700_000_010)
    assert not verify_signature(SECRET, BODY + b" ", header, now_unix=1_700_000_010)
    # A replay long after the signed time is refused.
    assert not verify_signature(SECRET, BODY, header, now_unix=1_700_000_000 + 301)
    # Moving `t` breaks the signature.
    moved = header.replace("t=1700000000", "t=1700000100")
    assert not verify_signature(SECRET, BODY, moved, now_unix=1_700_000_100)
    assert not verify_signature(SECRET, BODY, "garbage", now_unix=1_700_000_000)
