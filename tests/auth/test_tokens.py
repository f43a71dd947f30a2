"""Every kind of bad token is refused with 401 and WWW-Authenticate; valid but not
allowed is 403."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from tests.support import UploadApi, assert_error


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "user-1", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _bad_tokens(keypair: KeyPair) -> dict[str, str]:
    now = int(time.time())
    sign = keypair.private_pem
    other = KeyPair.generate()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "expired": jwt.encode(_claims(exp=now - 3600, iat=now - 7200), sign, "RS256"),
        "future_nbf": jwt.encode(_claims(nbf=now + 3600), sign, "RS256"),
        "future_iat": jwt.encode(_claims(iat=now + 3600), sign, "RS256"),
        "wrong_iss": jwt.encode(_claims(iss="someone-else"), sign, "RS256"),
        "wrong_aud": jwt.encode(_claims(aud="another-service"), sign, "RS256"),
        "no_sub": jwt.encode(_claims(sub=None), sign, "RS256"),
        "empty_sub": jwt.encode(_claims(sub=""), sign, "RS256"),
        "no_exp": jwt.encode(_claims(exp=None), sign, "RS256"),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        "hs256_with_public_key": _hs256_signed_with(keypair.public_pem),
        "another_key": other.token("user-1"),
        "es256_other_alg": jwt.encode(_claims(), ec_key, "ES256"),
        "garbage": "not-a-jwt",
        "tampered": _tamper(keypair.token("user-1")),
        "bad_file_id_claim": jwt.encode(_claims(file_id="abc"), sign, "RS256"),
    }


def _hs256_signed_with(secret: str) -> str:
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(_claims())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _tamper(token: str) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{_b64(_claims(sub='admin'))}.{signature}"


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "future_nbf",
        "future_iat",
        "wrong_iss",
        "wrong_aud",
        "no_sub",
        "empty_sub",
        "no_exp",
        "alg_none",
        "hs256_with_public_key",
        "another_key",
        "es256_other_alg",
        "garbage",
        "tampered",
        "bad_file_id_claim",
    ],
)
async def test_bad_token_is_401_with_www_authenticate(
    api: UploadApi, keypair: KeyPair, kind: str
) -> None:
    token = _bad_tokens(keypair)[kind]
    response = await api.init(headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_missing_and_non_bearer_authorization_are_401(api: UploadApi) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        response = await api.client.post(
            "/upload/init",
            headers=headers,
            json={"main_service_file_id": 1, "original_file_name": "a.mp3"},
        )
        assert_error(response, 401, "invalid_token")
        assert "bearer" in response.headers["www-authenticate"].lower()


async def test_leeway_accepts_slightly_expired_token(api: UploadApi, keypair: KeyPair) -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 5), keypair.private_pem, "RS256")
    response = await api.init(headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


async def test_audience_list_containing_ours_is_accepted(api: UploadApi, keypair: KeyPair) -> None:
    token = jwt.encode(_claims(aud=["other", DEV_AUDIENCE]), keypair.private_pem, "RS256")
    response = await api.init(headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


async def test_file_id_claim_must_match(api: UploadApi) -> None:
    response = await api.init(file_id=7, headers=api.headers(file_id=8))
    assert_error(response, 403, "forbidden")
    assert (await api.init(file_id=7, headers=api.headers(file_id=7))).status_code == 200


async def test_file_id_claim_checked_on_every_call(api: UploadApi, audio_wav: bytes) -> None:
    session_id = await api.session(file_id=7)
    wrong = api.headers(file_id=8)
    assert_error(await api.chunk(session_id, 0, audio_wav, headers=wrong), 403, "forbidden")
    assert_error(await api.complete(session_id, 1, 7, headers=wrong), 403, "forbidden")
    response = await api.client.get(f"/upload/{session_id}", headers=wrong)
    assert_error(response, 403, "forbidden")


async def test_required_file_id_claim(settings_factory: Any, keypair: KeyPair) -> None:
    from app.main import create_app
    from tests.conftest import running

    async with running(create_app(settings_factory(jwt_require_file_id_claim=True))) as http:
        api = UploadApi(http, keypair)
        assert_error(await api.init(file_id=3), 403, "forbidden")
        assert (await api.init(file_id=3, headers=api.headers(file_id=3))).status_code == 200
