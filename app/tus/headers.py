"""tus header values: parsing what clients send, formatting what we answer."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from email.utils import format_datetime

from app.errors import InvalidUploadHeader

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
)
# tus names -> hashlib names; sha1 is the one the checksum extension requires.
CHECKSUM_ALGORITHMS = {"sha1": "sha1", "md5": "md5", "sha256": "sha256"}
PATCH_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA_CHARS = 4096


def parse_offset(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 19:
        raise InvalidUploadHeader(f"{name} must be a non-negative integer.")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64(value)` pairs; a key may come alone.
    Values are decoded as UTF-8 (filenames); keys must be unique."""
    if not value:
        return {}
    if len(value) > MAX_METADATA_CHARS:
        raise InvalidUploadHeader("Upload-Metadata is too long.")
    found: dict[str, str] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if not parts[0] or len(parts) > 2 or parts[0] in found:
            raise InvalidUploadHeader("Upload-Metadata is malformed.")
        try:
            decoded = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            found[parts[0]] = decoded.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidUploadHeader(
                f"Upload-Metadata value of {parts[0]!r} is not base64 UTF-8."
            ) from None
    return found


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` -> (hashlib name, digest)."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    name = CHECKSUM_ALGORITHMS.get(algorithm.lower())
    if name is None:
        raise InvalidUploadHeader(
            "Unsupported checksum algorithm.",
            details={"supported": sorted(CHECKSUM_ALGORITHMS)},
        )
    try:
        return name, base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InvalidUploadHeader("Upload-Checksum is not base64.") from None


def http_date(moment: datetime) -> str:
    """RFC 9110 IMF-fixdate, as `Upload-Expires` wants."""
    return format_datetime(moment, usegmt=True)
