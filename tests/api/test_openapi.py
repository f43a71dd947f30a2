"""The OpenAPI document: every route lists its error responses with the envelope's
schema and one example per error code, taken from app.errors."""

from __future__ import annotations

from typing import Any

import httpx

from app.api.openapi_errors import CHUNK_ERRORS, COMPLETE_ERRORS, INIT_ERRORS
from app.errors import InternalError, InvalidToken, ServiceError

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


def all_errors() -> list[type[ServiceError]]:
    found: list[type[ServiceError]] = []
    pending = [ServiceError]
    while pending:
        cls = pending.pop()
        found.extend(cls.__subclasses__())
        pending.extend(cls.__subclasses__())
    return found


async def test_every_operation_documents_its_errors_with_the_envelope(
    client: httpx.AsyncClient,
) -> None:
    spec: dict[str, Any] = (await client.get("/openapi.json")).json()
    errors_by_code = {error.code: error for error in all_errors()}
    operations = [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) == 7
    for path, method, operation in operations:
        error_statuses = [s for s in operation["responses"] if int(s) >= 400]
        assert str(InternalError.status) in error_statuses, (method, path)
        for status in error_statuses:
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": ENVELOPE_REF}, (method, path, status)
            assert content["examples"], (method, path, status)
            for code, example in content["examples"].items():
                error = errors_by_code[code]
                assert error.status == int(status)
                assert example["value"]["status"] == "error"
                assert example["value"]["error"]["code"] == code
                assert example["value"]["message"] == error.default_message
    # No route falls back to FastAPI's own validation-error schema.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"message", "error"}


async def test_upload_routes_list_the_codes_the_contract_names(
    client: httpx.AsyncClient,
) -> None:
    spec: dict[str, Any] = (await client.get("/openapi.json")).json()

    def codes(path: str, method: str) -> set[str]:
        responses = spec["paths"][path][method]["responses"]
        return {
            code
            for status, response in responses.items()
            if int(status) >= 400
            for code in response["content"]["application/json"]["examples"]
        }

    assert {e.code for e in INIT_ERRORS} <= codes("/upload/init", "post")
    assert {e.code for e in CHUNK_ERRORS} <= codes("/upload/chunk", "post")
    assert {"staging_full", "session_expired", "checksum_mismatch"} <= codes(
        "/upload/chunk", "post"
    )
    assert {e.code for e in COMPLETE_ERRORS} <= codes("/upload/complete", "post")
    assert {"unsupported_audio", "storage_unavailable", "chunks_incomplete"} <= codes(
        "/upload/complete", "post"
    )
    unauthorized = spec["paths"]["/upload/init"]["post"]["responses"][str(InvalidToken.status)]
    assert "WWW-Authenticate" in unauthorized["headers"]
    chunk_body = spec["paths"]["/upload/chunk"]["post"]["requestBody"]["content"]
    assert set(chunk_body["multipart/form-data"]["schema"]["required"]) == {
        "upload_session_id",
        "chunk_index",
        "chunk",
    }
