"""Python client and command-line uploader for the audio upload service.

Imports only httpx and the standard library (the `cli` module adds typer and rich), never
the server's modules, so it can be copied into or installed beside any application.

    from app.client import upload
    result = upload("talk.wav", file_id=42, token=token, base_url="https://uploads.example")
    print(result.url)
"""

from app.client.errors import (
    AuthError,
    RejectedError,
    SessionGoneError,
    UnavailableError,
    UploadError,
    UploadInterrupted,
    UsageError,
)
from app.client.retry import RetryPolicy
from app.client.uploader import (
    DEFAULT_BASE_URL,
    AsyncUploader,
    Progress,
    UploadResult,
    upload,
    upload_file,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncUploader",
    "AuthError",
    "Progress",
    "RejectedError",
    "RetryPolicy",
    "SessionGoneError",
    "UnavailableError",
    "UploadError",
    "UploadInterrupted",
    "UploadResult",
    "UsageError",
    "upload",
    "upload_file",
]
