"""JWKS under attack and outage (issue 12, item 11), against a real HTTP JWKS server:
documents that are not a usable JWKS are 503 `auth_unavailable`; one fetch at a time;
the last good key set is kept for a bounded time while the endpoint fails; a slow
endpoint does not hold up chunk writes by tokens whose key is known (a real service
process); only https, or http to loopback, is accepted as the JWKS URL."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import ValidationError

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.main import create_app
from app.settings import Settings
from tests.conftest import running
from tests.processes import wait_until
from tests.service_process import ServiceProcess, settings_env
from tests.support import UploadApi, assert_error

_serial = itertools.count()


class JwksEndpoint:
    """A JWKS endpoint on loopback whose answers a test changes: the good document, a
    fixed status and body, or a hold (the request waits until released)."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyPair] = {}
        self.requests = 0
        self.status = 200
        self.body: bytes | None = None  # None: the JWKS of `keys`
        self.release = threading.Event()
        self.release.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                owner.release.wait(timeout=60)
                body = owner.body if owner.body is not None else owner.document()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def document(self) -> bytes:
        keys = []
        for kid, pair in self.keys.items():
            public_key = load_pem_public_key(pair.public_pem.encode())
            assert isinstance(public_key, rsa.RSAPublicKey)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": keys}).encode()


@pytest.fixture
def endpoint(keypair: KeyPair) -> Iterator[JwksEndpoint]:
    server = JwksEndpoint()
    server.keys["k1"] = keypair
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


def signed(pair: KeyPair, kid: str, sub: str | None = None) -> dict[str, str]:
    """A fresh token each call (unique jti), so the verified-token memo never answers."""
    token = jwt.encode(
        {
            "sub": sub or f"user-{next(_serial)}",
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "exp": 4_000_000_000,
            "jti": f"t-{next(_serial)}",
        },
        pair.private_pem,
        "RS256",
        headers={"kid": kid},
    )
    return {"Authorization": f"Bearer {token}"}


def jwks_settings(
    settings_factory: Callable[..., Settings], endpoint: JwksEndpoint, **overrides: Any
) -> Settings:
    return settings_factory(
        main_service_jwt_public_key=None, main_service_jwks_url=endpoint.url, **overrides
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<html>maintenance</html>",
        b"",
        b"[1, 2, 3]",
        b'{"keys": "none"}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}',  # not usable here
        b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "!!", "e": "AQAB"}]}',
        b'{"keys": [{"kty": "EC", "crv": "P-999", "kid": "k1", "x": "AA", "y": "AA"}]}',
        b"NaN",
    ],
)
async def test_a_document_that_is_no_usable_jwks_is_503(
    body: bytes,
    endpoint: JwksEndpoint,
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
) -> None:
    endpoint.body = body
    async with running(create_app(jwks_settings(settings_factory, endpoint))) as http:
        api = UploadApi(http, keypair)
        assert_error(await api.init(headers=signed(keypair, "k1")), 503, "auth_unavailable")


async def test_an_error_status_is_503(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    endpoint.status = 500
    async with running(create_app(jwks_settings(settings_factory, endpoint))) as http:
        api = UploadApi(http, keypair)
        assert_error(await api.init(headers=signed(keypair, "k1")), 503, "auth_unavailable")


async def test_a_kid_that_is_not_a_string_is_401(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    # Built by hand: PyJWT refuses to encode such a header.
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": "u", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "exp": 4_000_000_000}
    token = f"{part({'alg': 'RS256', 'kid': {'nested': ['x']}})}.{part(claims)}.c2ln"
    async with running(create_app(jwks_settings(settings_factory, endpoint))) as http:
        api = UploadApi(http, keypair)
        response = await api.init(headers={"Authorization": f"Bearer {token}"})
        assert_error(response, 401, "invalid_token")


async def test_concurrent_lookups_share_one_fetch(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    endpoint.release.clear()  # the first fetch hangs until every request is waiting on it
    settings = jwks_settings(settings_factory, endpoint, jwks_refresh_cooldown_seconds=0)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        calls = [
            asyncio.ensure_future(api.init(headers=signed(keypair, kid)))
            for kid in ["k1"] * 10 + [f"junk-{n}" for n in range(10)]
        ]
        await asyncio.to_thread(
            wait_until, lambda: endpoint.requests >= 1, timeout_seconds=30, what="a fetch"
        )
        await asyncio.sleep(0)  # let the other calls reach the fetch in flight
        endpoint.release.set()
        responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses[:10]] == [200] * 10
    assert all(r.status_code == 401 for r in responses[10:])
    # One fetch for all twenty; each junk kid may have asked for one more after it.
    assert endpoint.requests <= 11


async def test_last_good_keys_are_kept_while_the_endpoint_fails(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    # Cache 0 s: every look-up finds the set expired and wants a refresh.
    settings = jwks_settings(
        settings_factory,
        endpoint,
        jwks_cache_seconds=0,
        jwks_refresh_cooldown_seconds=0,
        jwks_stale_if_error_seconds=3600,
    )
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        assert (await api.init(headers=signed(keypair, "k1"))).status_code == 200
        endpoint.status, endpoint.body = 502, b"bad gateway"
        for _ in range(5):
            assert (await api.init(headers=signed(keypair, "k1"))).status_code == 200
        # An unknown kid still cannot be told from junk while the endpoint is down.
        assert_error(await api.init(headers=signed(keypair, "k2")), 401, "invalid_token")


async def test_stale_keys_stop_counting_after_the_bound(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    settings = jwks_settings(
        settings_factory,
        endpoint,
        jwks_cache_seconds=0,
        jwks_refresh_cooldown_seconds=0,
        jwks_stale_if_error_seconds=0,
    )
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        assert (await api.init(headers=signed(keypair, "k1"))).status_code == 200
        endpoint.body = b"not json"
        assert_error(await api.init(headers=signed(keypair, "k1")), 503, "auth_unavailable")
        endpoint.body = None  # the endpoint recovers: so does the service
        assert (await api.init(headers=signed(keypair, "k1"))).status_code == 200


async def test_failing_endpoint_is_not_hammered(
    endpoint: JwksEndpoint, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    endpoint.status = 500
    settings = jwks_settings(settings_factory, endpoint, jwks_refresh_cooldown_seconds=30)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        for n in range(10):
            response = await api.init(headers=signed(keypair, f"k{n}"))
            assert_error(response, 503, "auth_unavailable")
    assert endpoint.requests == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://keys.example.com/jwks.json",
        "http://10.0.0.1/jwks.json",
        "ftp://127.0.0.1/jwks.json",
        "https:///jwks.json",
        "keys.example.com/jwks.json",
    ],
)
def test_jwks_url_must_be_https_unless_loopback(
    url: str, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(ValidationError, match="https://"):
        settings_factory(main_service_jwt_public_key=None, main_service_jwks_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "https://keys.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:9000/jwks.json",
    ],
)
def test_https_and_loopback_jwks_urls_are_accepted(
    url: str, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(main_service_jwt_public_key=None, main_service_jwks_url=url)
    assert settings.main_service_jwks_url == url


async def test_slow_jwks_does_not_hold_up_chunks_of_known_keys(
    endpoint: JwksEndpoint,
    settings_factory: Callable[..., Settings],
    keypair: KeyPair,
    tmp_path: Path,
) -> None:
    """The issue's attack on a real service process: the cached set has expired, the
    endpoint hangs, and junk tokens with random kids arrive; chunk writes by tokens with
    the known kid must be answered while the junk requests still wait on the one fetch."""
    settings = jwks_settings(
        settings_factory,
        endpoint,
        jwks_cache_seconds=0,  # always expired: every look-up wants a refresh
        jwks_refresh_cooldown_seconds=0,
    )
    service = ServiceProcess(settings_env(settings), log_path=tmp_path / "service.log").start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
            init = await http.post(
                "/upload/init",
                json={"main_service_file_id": 1, "original_file_name": "a.wav"},
                headers=signed(keypair, "k1", sub="owner"),
            )
            assert init.status_code == 200, init.text
            session_id = init.json()["data"]["upload_session_id"]
            fetched = endpoint.requests
            endpoint.release.clear()  # from now on the endpoint hangs
            junk = [
                asyncio.ensure_future(
                    http.post(
                        "/upload/init",
                        json={"main_service_file_id": 1, "original_file_name": "a.wav"},
                        headers=signed(KeyPair.generate(), f"junk-{n}"),
                    )
                )
                for n in range(20)
            ]
            await asyncio.to_thread(
                wait_until,
                lambda: endpoint.requests > fetched,
                timeout_seconds=30,
                what="the hanging fetch",
            )
            for index in range(5):
                response = await http.post(
                    "/upload/chunk",
                    data={"upload_session_id": session_id, "chunk_index": str(index)},
                    files={"chunk": ("blob", b"x" * 1024)},
                    headers=signed(keypair, "k1", sub="owner"),
                )
                assert response.status_code == 200, response.text
            # The chunks were answered while every junk request still waits on the fetch
            # (which lasts until the 5 s fetch deadline: the endpoint is still held).
            assert not any(call.done() for call in junk)
            assert endpoint.requests == fetched + 1  # one fetch in flight, not twenty
            endpoint.release.set()
            answers = await asyncio.gather(*junk)
        assert {r.status_code for r in answers} <= {401, 503}
    finally:
        endpoint.release.set()
        service.stop()
