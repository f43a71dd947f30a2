"""Every way an upload can fail, each with the exit code the command line returns.

Callers tell failures apart by class (or by `exit_code`), never by parsing messages:

| Class                | Exit | When                                                         |
|----------------------|------|--------------------------------------------------------------|
| `UsageError`         | 2    | bad arguments, unreadable file, no token                     |
| `AuthError`          | 3    | 401/403: the token is missing, invalid, expired or not allowed |
| `RejectedError`      | 4    | any other 4xx the service will answer the same way again     |
| `SessionGoneError`   | 5    | the session expired, was aborted or no longer exists         |
| `UnavailableError`   | 6    | network errors, 5xx, 408/429 still failing after every retry |
| `UploadInterrupted`  | 130  | Ctrl-C / cancellation; the same command resumes              |
"""

from __future__ import annotations

from typing import Any, ClassVar


class UploadError(Exception):
    """Base of every client failure. `code` is the service's error code when it gave one."""

    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details


class UsageError(UploadError):
    exit_code = 2


class AuthError(UploadError):
    exit_code = 3


class RejectedError(UploadError):
    exit_code = 4


class SessionGoneError(UploadError):
    exit_code = 5


class UnavailableError(UploadError):
    exit_code = 6


class UploadInterrupted(UploadError):
    exit_code = 130
