"""Object keys built from what the user sent, made safe.

Invariant: a key is `<prefix>/<owner>/<file id>/<session id>/<name>`, where owner and
name are reduced to a conservative character set. The session id (a UUID we generated)
makes every key unique, so no file name can reach outside its prefix or overwrite
another upload.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 200


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


def build_object_key(
    prefix: str, owner_sub: str, main_service_file_id: int, session_id: str, file_name: str
) -> str:
    extension = file_extension(file_name)
    name = sanitize_component(file_name, fallback=f"audio.{extension}" if extension else "audio")
    owner = sanitize_component(owner_sub, fallback="user")
    parts = [prefix, owner, str(main_service_file_id), session_id, name]
    return "/".join(part for part in parts if part)
