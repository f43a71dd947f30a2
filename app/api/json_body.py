"""Reads a JSON request body (init, complete) only after the token has been checked.

FastAPI reads and parses a declared body parameter before it resolves any dependency,
so an unauthenticated client could make the service read MAX_JSON_BODY_BYTES, slowly,
per connection. Routes that take the body through `read_json_body` (instead of a body
parameter) run their `CurrentPrincipal` dependency first: no token, no body read. The
body then streams under the same idle timeout as chunks (408 `request_timeout`), and
under BodySizeLimitMiddleware's byte cap (413). Validation errors are raised as FastAPI's
own, so the 422 envelope is the one every other route gives.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from app.api.chunk_form import with_idle_timeout
from app.errors import ClientDisconnected, MalformedBody

Model = TypeVar("Model", bound=BaseModel)


async def read_json_body(
    request: Request, model: type[Model], *, idle_timeout_seconds: float | None
) -> Model:
    body = bytearray()
    try:
        async for piece in with_idle_timeout(request.stream(), idle_timeout_seconds):
            body.extend(piece)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("The JSON body is not UTF-8.") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**problem, "loc": ("body", *problem["loc"])}
                for problem in error.errors(include_url=False, include_input=False)
            ]
        ) from None


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The route's `openapi_extra`: documents the body the route reads by hand."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
