"""The service's five calls over httpx, each retried where a retry can help and every
failure translated into one of `app.client.errors`.

Nothing here knows about files or resuming; `uploader` composes these calls.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from app.client.errors import (
    AuthError,
    RejectedError,
    SessionGoneError,
    UnavailableError,
    UploadError,
)
from app.client.retry import RetryPolicy, is_retryable, parse_retry_after

log = logging.getLogger("app.client")

# The session cannot take this upload any more; a fresh session can.
SESSION_GONE_CODES = frozenset(
    {"session_not_found", "session_expired", "session_not_accepting_chunks"}
)


class ServiceClient:
    """One `httpx.AsyncClient` for the whole upload (connections are reused)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout_seconds: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "audio-upload-client/1"},
            timeout=httpx.Timeout(timeout_seconds, connect=15.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the calls
    async def init(self, body: dict[str, Any]) -> dict[str, Any]:
        envelope = await self._call("init", lambda: self._http.post("/upload/init", json=body))
        return _data(envelope)

    async def status(self, session_id: str) -> dict[str, Any]:
        envelope = await self._call("status", lambda: self._http.get(f"/upload/{session_id}"))
        return _data(envelope)

    async def chunk(
        self,
        session_id: str,
        index: int,
        data: bytes,
        sha256: str,
        on_sent: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """`on_sent(bytes_so_far)` is called as the body is streamed out."""
        fields = {
            "upload_session_id": session_id,
            "chunk_index": str(index),
            "chunk_sha256": sha256,
        }

        def send() -> Awaitable[httpx.Response]:
            body = _CountingReader(data, on_sent) if on_sent else io.BytesIO(data)
            return self._http.post(
                "/upload/chunk",
                data=fields,
                files={"chunk": ("chunk", body, "application/octet-stream")},
            )

        return _data(await self._call(f"chunk {index}", send))

    async def complete(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The service's message (it says whether the main service was notified) and data."""
        envelope = await self._call(
            "complete", lambda: self._http.post("/upload/complete", json=body)
        )
        return str(envelope.get("message") or ""), _data(envelope)

    # ------------------------------------------------------------------ retrying
    async def _call(
        self, what: str, send: Callable[[], Awaitable[httpx.Response]]
    ) -> dict[str, Any]:
        """The response's JSON envelope, after as many attempts as the policy allows."""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                response = await send()
            except httpx.TransportError as error:
                failure: UploadError = UnavailableError(
                    f"{what}: network error: {error.__class__.__name__}: {error}".rstrip(": ")
                )
            else:
                if response.is_success:
                    return _envelope(response)
                failure = _translate(what, response)
                if not is_retryable(response.status_code, failure.code):
                    raise failure
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt >= self.retry.max_attempts:
                raise UnavailableError(
                    f"{failure.message} (gave up after {attempt} attempts)",
                    status=failure.status,
                    code=failure.code,
                    details=failure.details,
                )
            delay = self.retry.delay_seconds(attempt, retry_after)
            log.info(
                "client.retry what=%s attempt=%d delay_seconds=%.2f reason=%s",
                what,
                attempt,
                delay,
                failure.message,
            )
            await self._sleep(delay)


class _CountingReader(io.BytesIO):
    """The chunk's bytes as a file httpx streams in pieces, reporting how far it got.
    Each attempt gets a fresh reader, so a retried chunk counts from zero again."""

    def __init__(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        super().__init__(data)
        self._on_sent = on_sent

    def read(self, size: int | None = -1, /) -> bytes:
        piece = super().read(size)
        self._on_sent(self.tell())
        return piece


def _envelope(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RejectedError(
            f"the service answered {response.status_code} with a body that is not the "
            "JSON envelope: is the URL right?",
            status=response.status_code,
        )
    return body


def _data(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope.get("data")
    return data if isinstance(data, dict) else {}


def _translate(what: str, response: httpx.Response) -> UploadError:
    status = response.status_code
    message, code, details = f"HTTP {status}", None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or message)
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            details = error.get("details")
    text = f"{what}: {message}" + (f" [{code}]" if code else f" [HTTP {status}]")
    kind: type[UploadError]
    if status in (401, 403):
        kind = AuthError
    elif code in SESSION_GONE_CODES:
        kind = SessionGoneError
    elif is_retryable(status, code):
        kind = UnavailableError
    else:
        kind = RejectedError
    return kind(text, status=status, code=code, details=details)
