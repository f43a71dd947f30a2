"""The response envelope, and the one place where every error becomes a response."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    InternalError,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceError,
    ValidationFailed,
)

log = structlog.get_logger(__name__)


def success(message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "success", "message": message}
    if data is not None:
        body["data"] = data
    return body


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"status": "error", "message": message, "error": {"code": code, "details": details}}


def error_response(error: ServiceError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if error.status == 401 else None
    return JSONResponse(
        error_body(error.code, error.message, error.details),
        status_code=error.status,
        headers=headers,
    )


async def _on_service_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    return error_response(error)


async def _on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # Only where and what: never echo the input back (it may be huge or sensitive).
    problems = [
        {
            "loc": [str(part) for part in item.get("loc", ())],
            "msg": item.get("msg"),
            "type": item.get("type"),
        }
        for item in error.errors()
    ]
    return error_response(ValidationFailed("The request is invalid.", details=problems))


async def _on_http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 404:
        return error_response(NotFound())
    if error.status_code == 405:
        return error_response(MethodNotAllowed())
    if error.status_code == 413:
        return error_response(RequestTooLarge())
    if error.status_code == 400:
        # FastAPI's answer to a body it cannot even decode (e.g. JSON that is not UTF-8):
        # to the client that is a malformed body like any other (422 in the contract).
        return error_response(MalformedBody())
    message = str(error.detail) if error.detail else "The request failed."
    return JSONResponse(error_body("http_error", message), status_code=error.status_code)


async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("request.unhandled_error", path=request.url.path, error_type=type(error).__name__)
    return error_response(InternalError())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
