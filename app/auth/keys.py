"""Where verification keys come from: one PEM key, or a JWKS URL with `kid` rotation.

JWKS design (`JwksKeys`), so that neither junk tokens nor a slow or failing key endpoint
can hold up uploads by tokens whose key is already known:

- Fetched with httpx on the event loop (no worker thread, no process-wide lock), with a
  whole-request deadline and a cap on the document's size.
- Single flight: at most one fetch runs at a time; every caller that needs one awaits
  that same fetch.
- Rate-limited: a fetch starts at most once per `JWKS_REFRESH_COOLDOWN_SECONDS`, whatever
  asks for it (an unknown `kid`, an expired cache, a failed fetch). A token with an
  unknown `kid` inside the cooldown is refused (401) without a fetch.
- A known `kid` never waits for the network while its key set is younger than
  `JWKS_CACHE_SECONDS + JWKS_STALE_IF_ERROR_SECONDS`: after `JWKS_CACHE_SECONDS` a
  background refresh is started and the cached key answers meanwhile (stale while
  revalidate); if refreshes keep failing, the last good set keeps answering until that
  bound (stale if error), then 503. A key withdrawn from the JWKS thus stops counting at
  the first refresh that succeeds after `JWKS_CACHE_SECONDS`.
- A document that cannot be fetched, is not JSON, is not a JWKS, or has no key this
  service can use is a failed fetch: 503 `auth_unavailable` when no usable set is left,
  never a 500, and the previous set (if any) is kept.
- `https://` only, plain http only to loopback (checked in `Settings`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import structlog
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.errors import AuthUnavailable, InvalidToken
from app.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

JWKS_FETCH_TIMEOUT_SECONDS = 5.0
"""The whole fetch (connect, headers, body); a dripping endpoint is cut off here."""
JWKS_MAX_BYTES = 1024 * 1024
"""A JWKS holds a handful of keys (a few KiB); anything far larger is not one."""


class KeySource(Protocol):
    async def key_for(self, token: str) -> Any: ...

    async def close(self) -> None: ...


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

    async def close(self) -> None:
        return None


class _FetchFailed(Exception):
    pass


@dataclass(frozen=True)
class _KeySet:
    keys: dict[str, Any]  # kid -> key object
    only_key: Any | None  # the one key, when the set holds exactly one (for kid-less tokens)
    fetched_at: float

    def get(self, kid: str | None) -> Any | None:
        if kid is None:
            return self.only_key
        return self.keys.get(kid)


class JwksKeys:
    """Keys from a JWKS document: cached, refreshed in one rate-limited flight at a time,
    kept for a bounded time while the endpoint fails (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        refresh_cooldown_seconds: float,
        stale_if_error_seconds: float,
        fetch_timeout_seconds: float = JWKS_FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._cache_seconds = cache_seconds
        self._cooldown_seconds = refresh_cooldown_seconds
        self._usable_seconds = cache_seconds + stale_if_error_seconds
        self._fetch_timeout_seconds = fetch_timeout_seconds
        self._clock = clock
        self._current: _KeySet | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0  # attempts made, for tests and logs

    async def key_for(self, token: str) -> Any:
        kid = _kid_of(token)
        current, now = self._current, self._clock()
        if current is not None:
            key = current.get(kid)
            age = now - current.fetched_at
            if key is not None and age < self._usable_seconds:
                if age >= self._cache_seconds:
                    self._refresh()  # in the background; this caller does not wait
                return key
        # No set yet, an unknown kid, or a set too old to trust: this caller needs a fetch.
        flight = self._refresh()
        if flight is not None:
            await asyncio.shield(flight)  # one caller giving up must not stop the others
        current = self._current
        if current is None or (
            current.fetched_at < now and self._clock() - current.fetched_at >= self._usable_seconds
        ):
            raise AuthUnavailable()  # nothing fetched now, nothing recent enough kept
        key = current.get(kid)
        if key is None:
            raise InvalidToken("No known key signed this token.")
        return key

    def _refresh(self) -> asyncio.Task[None] | None:
        """The fetch in flight, or a new one if the cooldown allows; None otherwise."""
        if self._inflight is not None:
            return self._inflight
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self._cooldown_seconds:
            return None
        self._last_attempt = now
        self._inflight = asyncio.create_task(self._fetch())
        return self._inflight

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with asyncio.timeout(self._fetch_timeout_seconds):
                body = await self._download()
            keys = _usable_keys(body)
        except (_FetchFailed, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            log.warning("auth.jwks_fetch_failed", url=self._url, reason=reason)
        except Exception as error:  # whatever the endpoint sent: a failed fetch, never a 500
            log.exception("auth.jwks_fetch_failed", url=self._url, reason=type(error).__name__)
        else:
            only = next(iter(keys.values())) if len(keys) == 1 else None
            self._current = _KeySet(keys, only, self._clock())
            log.info("auth.jwks_fetched", url=self._url, keys=len(keys))
        finally:
            self._inflight = None

    async def _download(self) -> bytes:
        # Imported here: a service verifying with a PEM key never loads httpx (~2 MB).
        import httpx

        try:
            async with (
                httpx.AsyncClient(timeout=self._fetch_timeout_seconds, trust_env=False) as client,
                client.stream("GET", self._url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP status {response.status_code}")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > JWKS_MAX_BYTES:
                        raise _FetchFailed("document over JWKS_MAX_BYTES")
                return bytes(body)
        except httpx.HTTPError as error:
            raise _FetchFailed(str(error) or type(error).__name__) from error

    async def close(self) -> None:
        flight = self._inflight
        if flight is not None:
            flight.cancel()
            await asyncio.gather(flight, return_exceptions=True)


def _kid_of(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise InvalidToken("The bearer token is malformed.") from None
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("The token's kid is not a string.")
    return kid


_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


def _usable_keys(body: bytes) -> dict[str, Any]:
    """kid -> key for the signing keys in a JWKS document; _FetchFailed if there are none."""
    try:
        document = json.loads(body)
    except ValueError:
        raise _FetchFailed("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _FetchFailed("no 'keys' list")
    keys: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            continue  # a published symmetric key is a leak, and HS* is refused anyway
        kid = entry.get("kid", "")
        if not isinstance(kid, str):
            continue
        try:
            keys[kid] = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key type or curve this service cannot use: skip, keep the rest
    if not keys:
        raise _FetchFailed("no usable key")
    return keys


def key_source_from(settings: Settings) -> KeySource:
    if settings.main_service_jwt_public_key is not None:
        return StaticKey(settings.main_service_jwt_public_key.get_secret_value())
    assert settings.main_service_jwks_url is not None  # guaranteed by Settings
    return JwksKeys(
        settings.main_service_jwks_url,
        cache_seconds=settings.jwks_cache_seconds,
        refresh_cooldown_seconds=settings.jwks_refresh_cooldown_seconds,
        stale_if_error_seconds=settings.jwks_stale_if_error_seconds,
    )
