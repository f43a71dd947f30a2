"""JWT verification. Only the configured asymmetric algorithm is accepted, whatever the
token's header claims, so `none` and HS* tokens (even "signed" with the public key)
never verify.

A client sends the same token with every chunk of a file, so a token that verified is
remembered for a short while (never past its `exp`): the chunks after the first skip the
signature check, the claims and, with JWKS, a thread hand-off for the key look-up. The
short cap bounds how long a token stays accepted after its key leaves the JWKS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

from app.auth.keys import KeySource
from app.errors import Forbidden, InvalidToken
from app.uploads.models import Principal

VERIFIED_TOKEN_TTL_SECONDS = 30.0
VERIFIED_TOKEN_CAPACITY = 4096


class _VerifiedTokens:
    """Tokens that verified, each with the principal it gave and until when it counts."""

    def __init__(self, *, ttl_seconds: float, capacity: int, clock: Callable[[], float]) -> None:
        self._ttl_seconds = ttl_seconds
        self._capacity = capacity
        self._clock = clock
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, valid_until = entry
        if self._clock() >= valid_until:
            del self._entries[token]
            return None
        return principal

    def put(self, token: str, principal: Principal, expires_at: float) -> None:
        if len(self._entries) >= self._capacity:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[token] = (principal, min(self._clock() + self._ttl_seconds, expires_at))


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        *,
        algorithm: str,
        issuer: str,
        audience: str,
        leeway_seconds: int,
        require_file_id: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._leeway_seconds = leeway_seconds
        self._require_file_id = require_file_id
        self._verified = _VerifiedTokens(
            ttl_seconds=VERIFIED_TOKEN_TTL_SECONDS, capacity=VERIFIED_TOKEN_CAPACITY, clock=clock
        )

    async def close(self) -> None:
        await self._keys.close()

    async def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None:
            return remembered
        principal, expires_at = await self._verify(token)
        self._verified.put(token, principal, expires_at)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The bearer token is malformed.") from None
        if header.get("alg") != self._algorithm:
            raise InvalidToken("The token's signing algorithm is not accepted.")
        key = await self._keys.key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_seconds,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The bearer token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("The bearer token is not valid yet.") from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise InvalidToken("The bearer token has no subject.")
        file_id = _file_id_claim(claims)
        if file_id is None and self._require_file_id:
            raise Forbidden("This token must carry a file_id claim.")
        return Principal(sub=sub, file_id=file_id), float(claims["exp"])


def _file_id_claim(claims: dict[str, Any]) -> int | None:
    value = claims.get("file_id")
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidToken("The token's file_id claim is not an integer.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise InvalidToken("The token's file_id claim is not an integer.")
