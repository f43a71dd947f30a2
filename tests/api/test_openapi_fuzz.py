"""Schemathesis against /openapi.json: generated requests (valid and invalid) never get a
5xx, and every response matches what the document says (status code, content type,
headers, body schema).

The app runs in-process with its real lifespan (real moto S3 over HTTP, a SQLite file).
A valid bearer token goes with every request so the fuzzer reaches past auth, and about
half of the requests that name an upload session name a real one, so the session rules
run too, not only "not found". Examples are bounded and derandomised so CI stays fast
and repeatable.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from app.main import create_app
from app.settings import Settings

EXAMPLES_PER_OPERATION = 200
FILE_ID = 42
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_target(
    s3_server: LocalS3Server, keypair: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3_server.create_bucket(bucket)
    root: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        Settings(
            _env_file=None,
            main_service_jwt_public_key=keypair.public_pem,
            expected_jwt_issuer=DEV_ISSUER,
            expected_jwt_audience=DEV_AUDIENCE,
            s3_bucket_name=bucket,
            s3_endpoint_url=s3_server.endpoint_url,
            s3_access_key=DEV_ACCESS_KEY,
            s3_secret_key=DEV_SECRET_KEY,
            local_temp_chunk_path=root / "staging",
            database_url=f"sqlite+aiosqlite:///{root / 'sessions.db'}",
            log_level="ERROR",
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    headers = {"Authorization": f"Bearer {keypair.token('fuzzer', ttl_seconds=3600)}"}
    client = asgi.get_client(cast(Any, app))
    created = client.post(
        "/upload/init",
        json={"main_service_file_id": FILE_ID, "original_file_name": "voice.wav"},
        headers=headers,
    )
    assert created.status_code == 200, created.text
    session_id = created.json()["data"]["upload_session_id"]
    yield {"schema": schema, "headers": headers, "session_id": session_id}
    asgi.shutdown_lifespans()


OPERATIONS = [
    ("/upload/init", "POST"),
    ("/upload/chunk", "POST"),
    ("/upload/complete", "POST"),
    ("/upload/{upload_session_id}", "GET"),
    ("/upload/{upload_session_id}", "DELETE"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
]
_choices = random.Random(5)


def _aim_at_real_session(case: Any, session_id: str) -> None:
    """Half of the time, name the fuzzer's own session instead of a random id."""
    if _choices.random() < 0.5:
        return
    if isinstance(case.path_parameters, dict) and "upload_session_id" in case.path_parameters:
        case.path_parameters["upload_session_id"] = session_id
    if isinstance(case.body, dict) and "upload_session_id" in case.body:
        case.body["upload_session_id"] = session_id
        if "main_service_file_id" in case.body:
            case.body["main_service_file_id"] = FILE_ID


def test_every_operation_is_fuzzed(fuzz_target: dict[str, Any]) -> None:
    documented = {
        (operation.ok().path, operation.ok().method.upper())
        for operation in fuzz_target["schema"].get_all_operations()
    }
    assert documented == set(OPERATIONS)


# Schemathesis' own pytest plugin (`from_fixture`) does not run under this pytest, so
# the operations' Hypothesis strategies are used directly: the same generation and checks.
@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_server_errors_and_responses_match_the_document(
    fuzz_target: dict[str, Any], path: str, method: str
) -> None:
    operation = fuzz_target["schema"][path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        _aim_at_real_session(case, fuzz_target["session_id"])
        case.call_and_validate(headers=fuzz_target["headers"], checks=CHECKS)

    run()
