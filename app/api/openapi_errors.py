"""The error responses each route documents in OpenAPI, built from the error classes.

A route names the `ServiceError` classes it can raise; this module groups them by
status and documents each status with the envelope's schema and one example per error
code (its code and default message). Examples come from `app.errors` itself, so the
document cannot drift from what the service really answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from app.api.envelope import error_body
from app.api.schemas import ErrorEnvelope
from app.errors import (
    AuthUnavailable,
    ChecksumMismatch,
    ChunksIncomplete,
    ChunkTooLarge,
    ClientDisconnected,
    CompletionInProgress,
    FileIdMismatch,
    FileTooLarge,
    Forbidden,
    InternalError,
    InvalidToken,
    MalformedBody,
    NotReady,
    RequestIdleTimeout,
    RequestTooLarge,
    ServiceError,
    SessionExpired,
    SessionNotAcceptingChunks,
    SessionNotCompletable,
    SessionNotFound,
    SizeMismatch,
    StagingFull,
    StagingQuotaExceeded,
    StorageUnavailable,
    TooManyOpenSessions,
    UnsupportedAudio,
    ValidationFailed,
)

Responses = dict[int | str, dict[str, Any]]

# Every route may fail unexpectedly, or be called while the service starts or stops.
ALWAYS: tuple[type[ServiceError], ...] = (InternalError, NotReady)
AUTHENTICATED: tuple[type[ServiceError], ...] = (
    InvalidToken,
    Forbidden,
    AuthUnavailable,  # the JWKS endpoint could not be reached
    ValidationFailed,
)

# JSON bodies over MAX_JSON_BODY_BYTES are refused before they are parsed.
# JSON bodies over MAX_JSON_BODY_BYTES are refused before they are parsed; a body that
# stalls past JSON_IDLE_TIMEOUT_SECONDS is cut off.
JSON_BODY = (RequestTooLarge, MalformedBody, RequestIdleTimeout, ClientDisconnected)
INIT_ERRORS: tuple[type[ServiceError], ...] = (
    *AUTHENTICATED,
    *JSON_BODY,
    FileTooLarge,
    ChunkTooLarge,
    TooManyOpenSessions,
)
CHUNK_ERRORS: tuple[type[ServiceError], ...] = (
    *AUTHENTICATED,
    SessionNotFound,
    SessionNotAcceptingChunks,
    SessionExpired,
    ChunkTooLarge,
    FileTooLarge,
    ChecksumMismatch,
    MalformedBody,
    ClientDisconnected,
    RequestIdleTimeout,
    RequestTooLarge,
    StagingFull,
    StagingQuotaExceeded,
)
COMPLETE_ERRORS: tuple[type[ServiceError], ...] = (
    *AUTHENTICATED,
    *JSON_BODY,
    SessionNotFound,
    FileIdMismatch,
    ChunksIncomplete,
    CompletionInProgress,
    SessionNotCompletable,
    SessionExpired,
    ChecksumMismatch,
    SizeMismatch,
    UnsupportedAudio,
    StorageUnavailable,
)
STATUS_ERRORS: tuple[type[ServiceError], ...] = (*AUTHENTICATED, SessionNotFound)
ABORT_ERRORS: tuple[type[ServiceError], ...] = (
    *AUTHENTICATED,
    SessionNotFound,
    SessionNotCompletable,
    CompletionInProgress,
    SessionExpired,
)


def error_responses(*errors: type[ServiceError]) -> Responses:
    """OpenAPI `responses` for these errors (plus those every route can return)."""
    by_status: dict[int, list[type[ServiceError]]] = {}
    for error in _unique((*errors, *ALWAYS)):
        by_status.setdefault(error.status, []).append(error)
    responses: Responses = {}
    for status, group in sorted(by_status.items()):
        codes = ", ".join(f"`{error.code}`" for error in group)
        response: dict[str, Any] = {
            "model": ErrorEnvelope,
            "description": f"{HTTPStatus(status).phrase}: {codes}",
            "content": {
                "application/json": {
                    "examples": {
                        error.code: {
                            "summary": error.default_message,
                            "value": error_body(error.code, error.default_message),
                        }
                        for error in group
                    }
                }
            },
        }
        if status == InvalidToken.status:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "The Bearer challenge (RFC 6750).",
                    "schema": {"type": "string"},
                }
            }
        responses[status] = response
    return responses


def _unique(errors: Iterable[type[ServiceError]]) -> list[type[ServiceError]]:
    return list(dict.fromkeys(errors))
