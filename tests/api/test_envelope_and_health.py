"""The error envelope everywhere, and the health probes."""

from __future__ import annotations

import httpx

from tests.support import UploadApi, assert_error


async def test_unknown_route_and_method_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.put("/upload/init"), 405, "method_not_allowed")


async def test_healthz_needs_no_auth(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "success"


async def test_readyz_checks_everything(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["data"]["checks"] == {"database": "ok", "s3": "ok", "staging": "ok"}


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len((await client.get("/healthz")).headers["x-request-id"]) == 32


async def test_openapi_lists_the_endpoints(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/upload/init",
        "/upload/chunk",
        "/upload/complete",
        "/upload/{upload_session_id}",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"]


async def test_undecodable_json_body_is_a_malformed_body(api: UploadApi) -> None:
    # Found by the OpenAPI fuzz test: bytes that are not UTF-8 used to get a bare 400.
    response = await api.client.post(
        "/upload/complete",
        content=b"\xff\xfe\x1d",
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert_error(response, 422, "malformed_body")
