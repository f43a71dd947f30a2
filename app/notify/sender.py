"""POSTs one signed event to the main service. httpx stays behind this module.

Any 2xx is delivery; every other status and every transport error is reported, not
raised, so callers only ever decide between "delivered" and "try again later".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.notify.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

USER_AGENT = "audio-upload-service/1.0 (+webhook)"


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
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=timeout_seconds
            )
        except httpx.TimeoutException:
            return SendResult(None, f"timeout after {timeout_seconds:g} s")
        except httpx.HTTPError as error:
            return SendResult(None, f"{type(error).__name__}: {error}"[:500])
        if 200 <= response.status_code < 300:
            return SendResult(response.status_code, None)
        return SendResult(response.status_code, f"HTTP {response.status_code}")


def new_http_client() -> httpx.AsyncClient:
    # Redirects are not followed: a webhook target that moves should be reconfigured,
    # not silently sent signed bodies elsewhere.
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
        headers={"User-Agent": USER_AGENT},
    )
