"""Every error the API can return: a stable snake_case code, an HTTP status, a message.

The domain raises these; `app.api.envelope` turns any of them into the error envelope.
Vendor errors (botocore, OS, SQL) are translated into one of these where they happen;
anything else becomes `internal_error` and is logged, never shown.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "An internal error occurred."

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)


class InvalidToken(ServiceError):
    code, status = "invalid_token", 401
    default_message = "The bearer token is missing or invalid."


class Forbidden(ServiceError):
    code, status = "forbidden", 403
    default_message = "This token is not allowed to do this."


class SessionNotFound(ServiceError):
    code, status = "session_not_found", 404
    default_message = "Upload session not found."


class NotFound(ServiceError):
    code, status = "not_found", 404
    default_message = "Not found."


class MethodNotAllowed(ServiceError):
    code, status = "method_not_allowed", 405
    default_message = "Method not allowed."


class SessionNotAcceptingChunks(ServiceError):
    code, status = "session_not_accepting_chunks", 409
    default_message = "The upload session no longer accepts chunks."


class FileIdMismatch(ServiceError):
    code, status = "file_id_mismatch", 409
    default_message = "main_service_file_id does not match the one given at init."


class ChunksIncomplete(ServiceError):
    code, status = "chunks_incomplete", 409
    default_message = "The received chunks do not match total_chunks."


class CompletionInProgress(ServiceError):
    code, status = "completion_in_progress", 409
    default_message = "Another request is completing this upload; retry shortly."


class LeaseLost(CompletionInProgress):
    """Raised by the holder of a session's work lease that finds it taken over, before a
    step the database cannot fence (S3's commit). Its shared state (the eager upload, the
    part rows) belongs to the new holder now: the loser leaves it alone."""


class SessionNotCompletable(ServiceError):
    code, status = "session_not_completable", 409
    default_message = "The upload session can no longer be completed."


class SessionExpired(ServiceError):
    code, status = "session_expired", 410
    default_message = "The upload session has expired."


class RequestIdleTimeout(ServiceError):
    code, status = "request_timeout", 408
    default_message = "The request body stalled for too long; the partial chunk was discarded."


class TooManyOpenSessions(ServiceError):
    code, status = "too_many_open_sessions", 429
    default_message = "Too many open upload sessions; complete or abort some first."


class RequestTooLarge(ServiceError):
    code, status = "request_too_large", 413
    default_message = "The request body is too large."


class ChunkTooLarge(ServiceError):
    code, status = "chunk_too_large", 413
    default_message = "The chunk exceeds the maximum chunk size."


class FileTooLarge(ServiceError):
    code, status = "file_too_large", 413
    default_message = "The file exceeds the maximum file size."


class UnsupportedAudio(ServiceError):
    code, status = "unsupported_audio", 415
    default_message = "The file is not audio of a supported format."


class ValidationFailed(ServiceError):
    code, status = "validation_error", 422
    default_message = "The request is invalid."


class ChecksumMismatch(ServiceError):
    code, status = "checksum_mismatch", 422
    default_message = "The SHA-256 of the data does not match the declared one."


class SizeMismatch(ServiceError):
    code, status = "size_mismatch", 422
    default_message = "The size of the file does not match the declared total_size."


class StorageUnavailable(ServiceError):
    code, status = "storage_unavailable", 503
    default_message = "Object storage is unavailable; the upload is kept, retry later."


class NotReady(ServiceError):
    code, status = "not_ready", 503
    default_message = "The service is not ready."


class StagingFull(ServiceError):
    code, status = "staging_full", 507
    default_message = "Staging storage is full; retry later."


class StagingQuotaExceeded(ServiceError):
    code, status = "staging_quota_exceeded", 507
    default_message = (
        "This user has too many bytes staged; complete or abort an upload to free space."
    )


class InternalError(ServiceError):
    code, status = "internal_error", 500
    default_message = "An internal error occurred."


class ClientDisconnected(ServiceError):
    code, status = "client_disconnected", 400
    default_message = "The client disconnected before the request was complete."


class MalformedBody(ServiceError):
    code, status = "malformed_body", 422
    default_message = "The request body could not be parsed."


class AuthUnavailable(ServiceError):
    code, status = "auth_unavailable", 503
    default_message = "The signing keys could not be fetched; retry later."


# --- the resumable front doors (tus 1.0, IETF resumable uploads) -----------------------


class OffsetMismatch(ServiceError):
    code, status = "offset_mismatch", 409
    default_message = "Upload-Offset does not match the upload's current offset."


class UploadLocked(ServiceError):
    code, status = "upload_locked", 423
    default_message = "Another request is writing to this upload; retry shortly."


class UploadChecksumMismatch(ServiceError):
    code, status = "upload_checksum_mismatch", 460
    default_message = "Upload-Checksum does not match the request body; it was discarded."


class UnsupportedProtocolVersion(ServiceError):
    code, status = "unsupported_protocol_version", 412
    default_message = "This protocol version is not supported."


class InvalidUploadHeader(ServiceError):
    code, status = "invalid_upload_header", 400
    default_message = "An upload header is missing or invalid."


class UnsupportedMediaType(ServiceError):
    code, status = "unsupported_media_type", 415
    default_message = "The request body has the wrong Content-Type."


class UploadLengthExceeded(ServiceError):
    code, status = "upload_length_exceeded", 413
    default_message = "The data goes past the upload's declared length."
