"""Where verification keys come from: one PEM key, or a JWKS URL with `kid` rotation."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.errors import AuthUnavailable, InvalidToken
from app.settings import Settings, SettingsError


class KeySource(Protocol):
    async def key_for(self, token: str) -> Any: ...


class StaticKey:
    def __init__(self, pem: str) -> None:
        try:
            self._key = load_pem_public_key(pem.encode())
        except ValueError:
            raise SettingsError(
                "invalid configuration: MAIN_SERVICE_JWT_PUBLIC_KEY: not a readable PEM public key"
            ) from None

    async def key_for(self, token: str) -> Any:
        return self._key


class JwksKeys:
    """Keys fetched from a JWKS document, cached; an unknown `kid` triggers one refetch,
    which is how a rotated key is picked up."""

    def __init__(self, url: str, *, cache_seconds: float, refresh_cooldown_seconds: float) -> None:
        # A cooldown on refetches for unknown kids keeps junk tokens from hammering the
        # main service's JWKS endpoint.
        self._client = jwt.PyJWKClient(
            url,
            cache_keys=False,
            lifespan=max(cache_seconds, 1),
            timeout=10,
            cooldown_duration=refresh_cooldown_seconds,
        )

    async def key_for(self, token: str) -> Any:
        try:
            signing_key = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError:
            # Not the caller's fault: the main service's key endpoint is unreachable.
            raise AuthUnavailable() from None
        except (jwt.PyJWKClientError, jwt.DecodeError):
            raise InvalidToken("No known key signed this token.") from None
        return signing_key.key


def key_source_from(settings: Settings) -> KeySource:
    if settings.main_service_jwt_public_key is not None:
        return StaticKey(settings.main_service_jwt_public_key.get_secret_value())
    assert settings.main_service_jwks_url is not None  # guaranteed by Settings
    return JwksKeys(
        settings.main_service_jwks_url,
        cache_seconds=settings.jwks_cache_seconds,
        refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds,
    )
