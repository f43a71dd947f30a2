"""Keys from a JWKS URL (a real HTTP server on loopback): `kid` selection and rotation."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.main import create_app
from app.settings import Settings
from tests.conftest import running
from tests.support import UploadApi, assert_error


class JwksServer:
    def __init__(self) -> None:
        self.keys: dict[str, KeyPair] = {}
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(owner.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def document(self) -> dict[str, Any]:
        keys = []
        for kid, pair in self.keys.items():
            public_key = load_pem_public_key(pair.public_pem.encode())
            assert isinstance(public_key, rsa.RSAPublicKey)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def signed(pair: KeyPair, kid: str, sub: str = "user-1") -> dict[str, str]:
    token = jwt.encode(
        {"sub": sub, "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "exp": 4_000_000_000},
        pair.private_pem,
        "RS256",
        headers={"kid": kid},
    )
    return {"Authorization": f"Bearer {token}"}


async def test_kid_selection_and_rotation(
    jwks: JwksServer, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    old, new, stranger = keypair, KeyPair.generate(), KeyPair.generate()
    jwks.keys["old"] = old
    settings = settings_factory(
        main_service_jwt_public_key=None,
        main_service_jwks_url=jwks.url,
        jwks_refresh_cooldown_seconds=0,
    )
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        assert (await api.init(headers=signed(old, "old"))).status_code == 200
        assert jwks.requests == 1
        # The main service rotates: the new kid is fetched on first sight.
        jwks.keys["new"] = new
        assert (await api.init(headers=signed(new, "new"))).status_code == 200
        assert jwks.requests == 2
        assert (await api.init(headers=signed(old, "old"))).status_code == 200
        # Unknown kid, or a known kid with another key's signature: refused.
        assert_error(await api.init(headers=signed(stranger, "unknown")), 401, "invalid_token")
        assert_error(await api.init(headers=signed(stranger, "old")), 401, "invalid_token")


async def test_unknown_kids_do_not_hammer_the_jwks_endpoint(
    jwks: JwksServer, settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    jwks.keys["k1"] = keypair
    settings = settings_factory(main_service_jwt_public_key=None, main_service_jwks_url=jwks.url)
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        assert (await api.init(headers=signed(keypair, "k1"))).status_code == 200
        for n in range(5):
            response = await api.init(headers=signed(KeyPair.generate(), f"junk-{n}"))
            assert_error(response, 401, "invalid_token")
    assert jwks.requests == 1


async def test_unreachable_jwks_is_503_not_401(
    settings_factory: Callable[..., Settings], keypair: KeyPair
) -> None:
    from app.dev.s3server import free_port

    settings = settings_factory(
        main_service_jwt_public_key=None,
        main_service_jwks_url=f"http://127.0.0.1:{free_port()}/jwks",
    )
    async with running(create_app(settings)) as http:
        api = UploadApi(http, keypair)
        assert_error(await api.init(headers=signed(keypair, "k1")), 503, "auth_unavailable")
