"""JWT verification. Only the configured asymmetric algorithm is accepted, whatever the
token's header claims, so `none` and HS* tokens (even "signed" with the public key)
never verify."""

from __future__ import annotations

from typing import Any

import jwt

from app.auth.keys import KeySource
from app.errors import Forbidden, InvalidToken
from app.uploads.models import Principal


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
    ) -> None:
        self._keys = keys
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._leeway_seconds = leeway_seconds
        self._require_file_id = require_file_id

    async def verify(self, token: str) -> Principal:
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
        return Principal(sub=sub, file_id=file_id)


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
