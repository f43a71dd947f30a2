"""POSTs one signed event to the main service. httpx stays behind this module.

Any 2xx is delivery; every other status and every transport error is reported, not
raised, so callers only ever decide between "delivered" and "try again later".

A receiver is not trusted to be quick or brief (issue 12): `timeout_seconds` is a deadline
for the whole attempt (connect, send, status, headers), not httpx's per-read timeout that
a receiver dripping a byte at a time would reset forever; and at most MAX_RESPONSE_BYTES of
the response body are read (the status decides; the body is only drained so the
connection can be reused). A 2xx whose body is still arriving at the deadline counts as
delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.notify.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

USER_AGENT = "audio-upload-service/1.0 (+webhook)"
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SendResult:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        secret: bytes,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        # Real wall-clock seconds for `t=`: receivers compare it with their own clock.
        self._wall_clock = wall_clock

    async def send(self, event_id: str, body: bytes, *, timeout_seconds: float) -> SendResult:
        timestamp = int(self._wall_clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            SIGNATURE_HEADER: signature_header(self._secret, body, timestamp),
        }
        status: list[int] = []
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._post(body, headers, timeout_seconds, status)
        except (TimeoutError, httpx.TimeoutException):
            if not status:
                return SendResult(None, f"timeout after {timeout_seconds:g} s")
        except httpx.HTTPError as error:
            if not status:
                return SendResult(None, f"{type(error).__name__}: {error}"[:500])
        code = status[0]
        if 200 <= code < 300:
            return SendResult(code, None)
        return SendResult(code, f"HTTP {code}")

    async def _post(
        self, body: bytes, headers: dict[str, str], timeout_seconds: float, status: list[int]
    ) -> None:
        """POSTs; appends the status as soon as it is known, then drains a little."""
        async with self._client.stream(
            "POST", self._url, content=body, headers=headers, timeout=timeout_seconds
        ) as response:
            status.append(response.status_code)
            read = 0
            async for piece in response.aiter_raw():
                read += len(piece)
                if read > MAX_RESPONSE_BYTES:
                    break  # leaving the block closes the connection: nothing more is read


def new_http_client() -> httpx.AsyncClient:
    # Redirects are not followed: a webhook target that moves should be reconfigured,
    # not silently sent signed bodies elsewhere.
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
        headers={"User-Agent": USER_AGENT},
    )
