"""Schemathesis against /openapi.json: generated requests (valid and invalid) never get a
5xx, and every response matches what the document says (status code, content type,
headers, body schema).

The app runs in-process with its real lifespan (real moto S3 over HTTP, a SQLite file).
A valid bearer token goes with every request so the fuzzer reaches past auth, and about
half of the requests that name an upload session name a real one, so the session rules
run too, not only "not found". Examples are bounded and derandomised so CI stays fast
and repeatable.

The multipart form of /upload/chunk is also fuzzed below its schema (issue 12): raw
bodies with unicode, huge, empty, duplicated, unknown and missing fields, other scripts'
digits and fields in any order; none may get a 5xx, and every answer is the envelope.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
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
from tests.hostile import FORM_CONTENT_TYPE, form_body, form_part

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
    yield {"schema": schema, "headers": headers, "session_id": session_id, "app": app}
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


_SAFE_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates
FORM_NAMES = st.one_of(
    st.sampled_from(["upload_session_id", "chunk_index", "chunk_sha256", "chunk", "", "x"]),
    _SAFE_TEXT.filter(lambda name: '"' not in name and "\r" not in name and "\n" not in name),
)
INDEX_VALUES = st.sampled_from(
    ["0", "1", "\u00b2", "\u0661", "\uff11", "-1", "1.0", " 7 ", "9" * 40, "", "0x1"]
).map(str.encode)
FORM_VALUES = st.one_of(
    INDEX_VALUES,
    _SAFE_TEXT.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=64),
    st.integers(min_value=1000, max_value=6000).map(lambda size: b"v" * size),
)
# A valid form, then broken: the index replaced, parts dropped, extra (unknown, duplicated,
# huge, empty) parts added, and everything shuffled.
FORM_CASES = st.tuples(
    st.one_of(INDEX_VALUES, FORM_VALUES),
    st.booleans(),
    st.sets(st.sampled_from(["upload_session_id", "chunk_index", "chunk"]), max_size=3),
    st.lists(st.tuples(FORM_NAMES, FORM_VALUES, st.booleans()), max_size=12),
    st.randoms(use_true_random=False),
)


def test_the_chunk_form_never_gets_a_server_error(fuzz_target: dict[str, Any]) -> None:
    # A client of its own, used as a context: schemathesis' calls above may have ended the
    # app's lifespan, and entering starts it again if so.
    with asgi.get_client(cast(Any, fuzz_target["app"])) as client:
        _fuzz_chunk_form(client, fuzz_target)


def _fuzz_chunk_form(client: Any, fuzz_target: dict[str, Any]) -> None:
    headers = {**fuzz_target["headers"], "Content-Type": FORM_CONTENT_TYPE}

    @given(case=FORM_CASES)
    # Cases that were 500s or silently taken before (issue 12), always tried.
    @example(case=("\u00b2".encode(), True, set(), [], random.Random(1)))
    @example(case=(b"0", True, set(), [("upload_session_id", b"x", False)], random.Random(2)))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: tuple[bytes, bool, set[str], list[tuple[str, bytes, bool]], Any]) -> None:
        index, real_session, dropped, extra, order = case
        session = fuzz_target["session_id"] if real_session else str(uuid.uuid4())
        parts = [
            ("upload_session_id", session.encode(), False),
            ("chunk_index", index, False),
            ("chunk", b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(100), True),
        ]
        parts = [part for part in parts if part[0] not in dropped] + extra
        order.shuffle(parts)
        body = [
            form_part(name, value, file_name="blob" if as_file else None)
            for name, value, as_file in parts
        ]
        response = client.post("/upload/chunk", data=form_body(body), headers=headers)
        assert response.status_code < 500, response.text
        envelope = response.json()
        assert envelope["status"] in ("success", "error"), envelope
        if envelope["status"] == "error":
            assert envelope["error"]["code"], envelope

    run()
