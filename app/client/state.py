"""The resume record: one small JSON file per (file, service, main-service file id).

The file is named after a hash of the file's absolute path, size and modification time,
the `main_service_file_id` and the service URL, so editing the file or pointing at
another service never resumes the wrong session. It holds the session id, the chunking
chosen at init, the whole-file SHA-256 and, once done, the service's result.

The service stays the source of truth for which chunks it holds (`GET /upload/{id}`);
`received_chunks` here is informational. Writes are atomic (temp file + rename), so a
crash mid-write leaves the previous record intact. The default directory is per user:
`$AUDIO_UPLOAD_STATE_DIR`, else `$XDG_STATE_HOME/audio-upload`, else
`~/.local/state/audio-upload`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.client.errors import UsageError

STATE_VERSION = 1


def default_state_dir() -> Path:
    explicit = os.environ.get("AUDIO_UPLOAD_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "audio-upload"


@dataclass(frozen=True)
class FileIdentity:
    path: str  # absolute
    size_bytes: int
    mtime_ns: int
    file_id: int
    base_url: str

    @classmethod
    def of(cls, path: Path, file_id: int, base_url: str) -> FileIdentity:
        resolved = path.resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, file_id, base_url.rstrip("/"))

    @property
    def key(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:32]


@dataclass
class UploadState:
    identity: FileIdentity
    session_id: str
    chunk_size_bytes: int
    total_chunks: int
    sha256: str
    received_chunks: list[int] = field(default_factory=list)
    result: dict[str, Any] | None = None

    def to_json(self) -> str:
        body = {"version": STATE_VERSION, **asdict(self)}
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UploadState:
        body = json.loads(text)
        if body.get("version") != STATE_VERSION:
            raise ValueError("unknown state version")
        return cls(
            identity=FileIdentity(**body["identity"]),
            session_id=str(body["session_id"]),
            chunk_size_bytes=int(body["chunk_size_bytes"]),
            total_chunks=int(body["total_chunks"]),
            sha256=str(body["sha256"]),
            received_chunks=[int(i) for i in body.get("received_chunks", [])],
            result=body.get("result"),
        )


class StateStore:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_state_dir()

    def path_for(self, identity: FileIdentity) -> Path:
        return self.directory / f"{identity.key}.json"

    def load(self, identity: FileIdentity) -> UploadState | None:
        """The saved record, or None when there is none or it is unreadable or stale."""
        try:
            state = UploadState.from_json(self.path_for(identity).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a corrupt record only costs a fresh upload
        return state if state.identity == identity else None

    def save(self, state: UploadState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path_for(state.identity)
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json.part")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(state.to_json())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def forget(self, identity: FileIdentity) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(identity).unlink()

    @contextlib.contextmanager
    def lock(self, identity: FileIdentity) -> Iterator[None]:
        """One uploader per record at a time: a second run of the same command fails fast
        instead of racing the first over the same session."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX: no locking
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{identity.key}.lock"
        # O_NOFOLLOW: a symlink planted at the lock's name (another user, in a shared
        # state directory) must not make us create or open a file elsewhere.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UsageError(
                    f"The lock file {path} is a symbolic link; refusing to follow it."
                ) from None
            raise UsageError(f"Cannot open the lock file {path}: {error.strerror}") from None
        with os.fdopen(fd, "r+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"Another upload of this file to this service is running (lock {path})."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
