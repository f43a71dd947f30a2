"""File names and object keys built from what the user sent, made safe.

Invariant: a key is `<prefix>/<owner>/<file id>/<session id>/<name>`, where owner and
name are reduced to a conservative character set. The session id (a UUID we generated)
makes every key unique, so no file name can reach outside its prefix or overwrite
another upload.

Owner segment (issue 12): the sanitized `sub` (at most 48 characters, `user` when nothing
is left) plus `-` and the first 12 hex digits of the SHA-256 of the exact `sub` (UTF-8), so
`tenant-a/alice` and `tenant-b/alice`, or two subs in another script, never share a
prefix: `uploads/tenant-a_alice-5d41402abc4b/42/<session>/voice.wav`. The key is computed
once at init and stored with the session; sessions created before this rule have no
stored key and keep the old one (`legacy_object_key`), so no object moves.

Names (`check_file_name`): control characters (C0, DEL, C1), Unicode line and paragraph
separators and the bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
U+061C) are refused: they would be passed on verbatim to the webhook, the admin CLI's
output and logs, where they can forge lines or reorder what a reader sees. A name that is
only an extension (`.mp3`) is judged by the same allow-list as any other; its key name is
`audio.<extension>`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Collection

from app.errors import ValidationFailed

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 200
MAX_OWNER_CHARS = 48
OWNER_HASH_HEX_DIGITS = 12
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def refused_character(file_name: str) -> str | None:
    """The first character a file name must not carry, as `U+XXXX`, or None."""
    for char in file_name:
        if (
            unicodedata.category(char) in ("Cc", "Zl", "Zp")
            or char in _BIDI_CONTROLS
            or 0xD800 <= ord(char) <= 0xDFFF  # a lone surrogate (JSON allows "\ud800")
        ):
            return f"U+{ord(char):04X}"
    return None


def check_file_name(file_name: str, allowed_extensions: Collection[str]) -> None:
    """Refuse (422) names with control, separator or bidi characters, or an extension
    outside the allow-list."""
    if "\x00" in file_name:
        raise ValidationFailed("original_file_name must not contain NUL characters.")
    refused = refused_character(file_name)
    if refused is not None:
        raise ValidationFailed(
            "original_file_name must not contain control, line-separator or "
            f"bidirectional-override characters (found {refused}).",
            details={"character": refused},
        )
    if file_extension(file_name) not in allowed_extensions:
        raise ValidationFailed(
            "original_file_name must have an allowed audio extension.",
            details={"allowed_extensions": sorted(allowed_extensions)},
        )


def sanitize_component(value: str, *, fallback: str) -> str:
    """One path component: ASCII letters, digits, dot, dash and underscore only."""
    normalized = unicodedata.normalize("NFKD", value)
    ascii_only = normalized.encode("ascii", "ignore").decode("ascii")
    # Only the last path segment of a name the client sent counts: "a/../../b.mp3" -> "b.mp3".
    ascii_only = re.split(r"[\\/]", ascii_only)[-1]
    cleaned = _UNSAFE.sub("_", ascii_only).strip("._-")
    cleaned = cleaned[-MAX_NAME_CHARS:].lstrip("._-")
    return cleaned or fallback


def file_extension(file_name: str) -> str:
    """Lower-case extension without the dot, or '' when there is none."""
    base = re.split(r"[\\/]", file_name)[-1]
    if "." not in base:
        return ""
    return base.rsplit(".", 1)[-1].strip().lower()


def owner_segment(owner_sub: str) -> str:
    """The key segment of an owner: readable, and distinct for distinct subs."""
    normalized = unicodedata.normalize("NFKD", owner_sub)
    ascii_only = normalized.encode("ascii", "ignore").decode("ascii")
    # Unlike a file name, every part of the sub counts: "a/alice" and "b/alice" differ.
    readable = _UNSAFE.sub("_", ascii_only).strip("._-")[:MAX_OWNER_CHARS].rstrip("._-")
    exact = owner_sub.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(exact).hexdigest()[:OWNER_HASH_HEX_DIGITS]
    return f"{readable or 'user'}-{digest}"


def _key_name(file_name: str) -> str:
    extension = file_extension(file_name)
    fallback = f"audio.{extension}" if extension else "audio"
    name = sanitize_component(file_name, fallback=fallback)
    if extension and name.lower() == extension:  # ".mp3" would become "mp3"
        return fallback
    return name


def build_object_key(
    prefix: str, owner_sub: str, main_service_file_id: int, session_id: str, file_name: str
) -> str:
    """The key of a new session's object (the rule in the module docstring)."""
    owner = owner_segment(owner_sub)
    parts = [prefix, owner, str(main_service_file_id), session_id, _key_name(file_name)]
    return "/".join(part for part in parts if part)


def legacy_object_key(
    prefix: str, owner_sub: str, main_service_file_id: int, session_id: str, file_name: str
) -> str:
    """The key rule before owner hashes, for sessions created before it (no stored key):
    their objects, and any multipart upload already open for them, keep their names."""
    extension = file_extension(file_name)
    name = sanitize_component(file_name, fallback=f"audio.{extension}" if extension else "audio")
    owner = sanitize_component(owner_sub, fallback="user")
    parts = [prefix, owner, str(main_service_file_id), session_id, name]
    return "/".join(part for part in parts if part)
