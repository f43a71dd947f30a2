"""When and how long to wait before trying a request again.

Only failures that a later attempt can fix are retried: network errors, 5xx, 408, 429
and 409 `completion_in_progress`. Waits grow exponentially with jitter (so parallel chunk
senders do not retry in lockstep), capped, and a server's `Retry-After` is honoured as a
lower bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507})
RETRYABLE_CODES = frozenset({"completion_in_progress"})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    # A server asking for a longer pause than this is treated as down for now.
    max_retry_after_seconds: float = 300.0

    def backoff_seconds(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait after failed attempt number `attempt` (1-based): half fixed, half random."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2.0 ** (attempt - 1))
        fraction = rng.random() if rng is not None else random.random()
        return ceiling * (0.5 + 0.5 * fraction)

    def delay_seconds(self, attempt: int, retry_after_seconds: float | None) -> float:
        delay = self.backoff_seconds(attempt)
        if retry_after_seconds is not None:
            delay = max(min(retry_after_seconds, self.max_retry_after_seconds), delay)
        return delay


def is_retryable(status: int, code: str | None) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500 or code in RETRYABLE_CODES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
