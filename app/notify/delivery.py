"""Delivery of due outbox events: the one-pass `deliver_due`, the inline first attempt
(`OutboxNotifier.attempt_now`), and the thin background `DeliveryLoop` around them.

Every attempt is claimed first (see `app.notify.outbox`) and recorded after, with its
time, status code or error. A failed attempt is retried after an exponential gap with
jitter (`backoff_seconds`); after `max_attempts` the event is marked failed and logged
as `notify.failed`. Time comes in as `now`, so tests drive the schedule directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from app.notify.outbox import Attempt, AttemptOutcome, ClaimedEvent, EventState, SqlOutbox
from app.uploads.models import utc_now

if TYPE_CHECKING:  # the sender (and httpx) load only where webhooks are configured
    from app.notify.sender import WebhookSender

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int
    timeout_seconds: float = 10.0
    inline_timeout_seconds: float = 3.0
    # Longer than any attempt can take, so a live sender never loses its claim.
    lease_seconds: float = 60.0
    batch_size: int = 20
    backoff_base_seconds: float = 4.0
    backoff_cap_seconds: float = 300.0


@dataclass(frozen=True)
class PassReport:
    attempted: int = 0
    delivered: int = 0
    failed: int = 0


def backoff_seconds(attempts_made: int, policy: DeliveryPolicy, rng: random.Random) -> float:
    """Gap before the next attempt, after `attempts_made` (>= 1) failed ones: the
    exponential step, capped, times a random factor in [0.5, 1] so that events that
    failed together do not retry together. First retry after 2-4 s by default."""
    step = policy.backoff_base_seconds * 2.0 ** min(attempts_made - 1, 30)
    return min(step, policy.backoff_cap_seconds) * rng.uniform(0.5, 1.0)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def attempt_delivery(
    outbox: SqlOutbox,
    sender: WebhookSender,
    policy: DeliveryPolicy,
    claimed: ClaimedEvent,
    *,
    now: datetime,
    timeout_seconds: float,
    rng: random.Random,
    worker: str,
) -> AttemptOutcome:
    """Sends one claimed event once and records the attempt."""
    started = time.monotonic()
    result = await sender.send(claimed.event_id, claimed.body, timeout_seconds=timeout_seconds)
    duration_seconds = time.monotonic() - started
    attempts_made = claimed.attempts_made + 1
    next_attempt_at: datetime | None = None
    if result.delivered:
        outcome = AttemptOutcome.DELIVERED
    elif attempts_made >= policy.max_attempts:
        outcome = AttemptOutcome.FAILED
    else:
        outcome = AttemptOutcome.RETRY
        next_attempt_at = now + timedelta(seconds=backoff_seconds(attempts_made, policy, rng))
    await outbox.record_attempt(
        claimed,
        Attempt(
            attempted_at=now,
            duration_seconds=duration_seconds,
            status_code=result.status_code,
            error=result.error,
            outcome=outcome,
            worker=worker,
        ),
        next_attempt_at=next_attempt_at,
    )
    fields = {
        "event_id": claimed.event_id,
        "attempt": attempts_made,
        "status_code": result.status_code,
        "error": result.error,
        "duration_seconds": round(duration_seconds, 3),
        "worker": worker,
    }
    if outcome is AttemptOutcome.DELIVERED:
        log.info("notify.delivered", **fields)
    elif outcome is AttemptOutcome.FAILED:
        log.error("notify.failed", max_attempts=policy.max_attempts, **fields)
    else:
        log.warning("notify.retry_scheduled", next_attempt_at=next_attempt_at, **fields)
    return outcome


async def deliver_due(
    outbox: SqlOutbox,
    sender: WebhookSender,
    policy: DeliveryPolicy,
    *,
    now: datetime,
    rng: random.Random,
    worker: str,
) -> PassReport:
    """One pass: claim up to `batch_size` due events and attempt each once, together."""
    claimed = await outbox.claim_due(
        now=now, limit=policy.batch_size, lease_seconds=policy.lease_seconds
    )
    outcomes = await asyncio.gather(
        *(
            attempt_delivery(
                outbox,
                sender,
                policy,
                event,
                now=now,
                timeout_seconds=policy.timeout_seconds,
                rng=rng,
                worker=worker,
            )
            for event in claimed
        )
    )
    return PassReport(
        attempted=len(outcomes),
        delivered=outcomes.count(AttemptOutcome.DELIVERED),
        failed=outcomes.count(AttemptOutcome.FAILED),
    )


class OutboxNotifier:
    """The domain's `CompletionNotifier`, and the home of the delivery pass."""

    def __init__(
        self,
        outbox: SqlOutbox,
        sender: WebhookSender,
        policy: DeliveryPolicy,
        *,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        worker: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()  # jitter only: not security-relevant
        self.worker = worker or default_worker_name()

    async def attempt_now(self, event_id: str) -> bool:
        try:
            now = self._clock()
            claimed = await self.outbox.claim_due(
                now=now, limit=1, lease_seconds=self.policy.lease_seconds, event_id=event_id
            )
            if claimed:
                outcome = await attempt_delivery(
                    self.outbox,
                    self.sender,
                    self.policy,
                    claimed[0],
                    now=now,
                    timeout_seconds=self.policy.inline_timeout_seconds,
                    rng=self._rng,
                    worker=self.worker,
                )
                return outcome is AttemptOutcome.DELIVERED
            record = await self.outbox.get(event_id)
            return record is not None and record.state is EventState.DELIVERED
        except Exception:
            # The file is stored and the event is durable: a database hiccup here only
            # leaves the event to the background loop.
            log.exception("notify.inline_attempt_error", event_id=event_id)
            return False

    async def session_event(self, session_id: str) -> str | None:
        return await self.outbox.event_for_session(session_id)

    async def deliver_due(self, now: datetime | None = None) -> PassReport:
        return await deliver_due(
            self.outbox,
            self.sender,
            self.policy,
            now=now or self._clock(),
            rng=self._rng,
            worker=self.worker,
        )


class DeliveryLoop:
    """Runs a pass, then again at once if it was full, else after `interval_seconds`.
    A failing pass (database down) is logged and retried on the next tick."""

    def __init__(
        self,
        run_pass: Callable[[], Awaitable[PassReport]],
        *,
        interval_seconds: float,
        batch_size: int,
        stop_grace_seconds: float = 5.0,
    ) -> None:
        self._run_pass = run_pass
        self._interval_seconds = interval_seconds
        self._batch_size = batch_size
        self._stop_grace_seconds = stop_grace_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-delivery-loop")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_grace_seconds)
        except TimeoutError:
            # An attempt cut short keeps its claim until the lease lapses, then is
            # retried: at least once still holds.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            attempted = 0
            try:
                attempted = (await self._run_pass()).attempted
            except Exception:
                log.exception("notify.pass_error")
            if attempted >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_seconds)
