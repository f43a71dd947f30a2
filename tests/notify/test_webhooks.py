"""Main-service notification through the running app: a real receiver on loopback
verifies every signature; the background pass is driven one step at a time with a
clock set past each retry, instead of waiting out real backoff."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import func, select

from app.dev.keys import KeyPair
from app.main import create_app
from app.notify.delivery import DeliveryPolicy, OutboxNotifier, backoff_seconds
from app.notify.outbox import AttemptOutcome, EventState, SqlOutbox
from app.notify.tables import notify_events
from app.settings import Settings
from app.uploads.models import utc_now
from tests.conftest import running
from tests.notify.receiver import Receiver
from tests.support import UploadApi, sha256

SECRET = "test-notify-secret"
NOTIFIED = "File upload completed and main service notified."
QUEUED = "File upload completed; main service notification queued."


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver(SECRET.encode()).start()
    yield receiver
    await receiver.stop()


def with_notify(settings_factory: Callable[..., Settings], url: str, **overrides: Any) -> Settings:
    # The loop is off: these tests run the delivery pass themselves, one pass at a time.
    values: dict[str, Any] = {
        "main_service_notify_url": url,
        "main_service_notify_secret": SECRET,
        "notify_delivery_loop": False,
        **overrides,
    }
    return settings_factory(**values)


def notifier_of(app: Any) -> OutboxNotifier:
    notifier = app.state.container.notifier
    assert isinstance(notifier, OutboxNotifier)
    return notifier


async def test_completion_is_delivered_inline_with_every_field_and_a_valid_signature(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    app = create_app(with_notify(settings_factory, receiver.url))
    async with running(app) as http:
        api = UploadApi(http, keypair, sub="user-77")
        response = await api.upload(audio_wav, chunk_size=200_000, file_id=9, name="memo.wav")
        assert response.status_code == 200, response.text
        assert response.json()["message"] == NOTIFIED
        data = response.json()["data"]

        assert len(receiver.requests) == 1
        got = receiver.requests[0]
        assert got.signature_ok
        payload = got.payload
        assert payload["event_id"] == got.event_id
        assert payload["event"] == "upload.completed"
        assert payload["upload_session_id"]
        assert payload["main_service_file_id"] == 9
        assert payload["user_id"] == "user-77"
        assert payload["protocol"] == "chunks"
        assert payload["original_file_name"] == "memo.wav"
        assert payload["bucket"] == data["bucket"]
        assert payload["key"] == data["key"]
        assert payload["url"] == data["file_path_on_upload_service"]
        assert payload["size"] == len(audio_wav)
        assert payload["sha256"] == sha256(audio_wav)
        assert payload["content_type"] == data["content_type"]
        assert payload["occurred_at"].endswith("+00:00")
        # Audio facts found at completion travel with the event too.
        assert "duration_seconds" in data
        for name, value in data.items():
            if name != "file_path_on_upload_service":
                assert payload[name] == value, name

        outbox = app.state.container.outbox
        record = await outbox.get(got.event_id)
        assert record is not None
        assert record.state is EventState.DELIVERED
        attempts = await outbox.attempts_of(got.event_id)
        assert [(a.status_code, a.outcome) for a in attempts] == [(200, AttemptOutcome.DELIVERED)]

        # A repeated complete returns the same body and sends nothing again.
        again = await api.complete(payload["upload_session_id"], 3, file_id=9)
        assert again.status_code == 200, again.text
        assert again.json() == response.json()
        assert len(receiver.requests) == 1


async def test_receiver_500_then_200_delivers_the_same_event_after_recovery(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    receiver.plan = [500]
    app = create_app(with_notify(settings_factory, receiver.url))
    async with running(app) as http:
        api = UploadApi(http, keypair)
        started = utc_now()
        response = await api.upload(audio_wav, chunk_size=200_000)
        assert response.status_code == 200, response.text
        assert response.json()["message"] == QUEUED
        session_id = response.json()["data"]["key"].split("/")[-2]

        notifier = notifier_of(app)
        [first] = receiver.requests
        assert first.status == 500 and first.signature_ok
        record = await notifier.outbox.get(first.event_id)
        assert record is not None
        assert record.state is EventState.PENDING
        assert record.attempts == 1
        # The first retry is due within about 5 s.
        assert started < record.next_attempt_at <= utc_now() + timedelta(seconds=4)

        # Not due yet: neither a pass nor a repeated complete sends anything.
        assert (await notifier.deliver_due(now=utc_now())).attempted == 0
        again = await api.complete(session_id, 3)
        assert again.json()["message"] == QUEUED
        assert len(receiver.requests) == 1

        report = await notifier.deliver_due(now=record.next_attempt_at + timedelta(seconds=1))
        assert (report.attempted, report.delivered) == (1, 1)
        assert [r.status for r in receiver.requests] == [500, 200]
        second = receiver.requests[1]
        assert second.event_id == first.event_id
        assert second.body == first.body
        assert second.signature_ok

        attempts = await notifier.outbox.attempts_of(first.event_id)
        assert [a.status_code for a in attempts] == [500, 200]
        assert attempts[0].error == "HTTP 500"
        # Delivered: no later pass, and no repeated complete, sends it again.
        assert (await notifier.deliver_due(now=utc_now() + timedelta(days=1))).attempted == 0
        final = await api.complete(session_id, 3)
        assert final.json()["message"] == NOTIFIED
        assert len(receiver.requests) == 2


async def test_unreachable_receiver_queues_and_records_the_error(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    await receiver.stop()  # nothing listens on its port now
    app = create_app(with_notify(settings_factory, receiver.url))
    async with running(app) as http:
        response = await UploadApi(http, keypair).upload(audio_wav, chunk_size=200_000)
        assert response.status_code == 200, response.text
        assert response.json()["message"] == QUEUED
        outbox: SqlOutbox = app.state.container.outbox
        [record] = await outbox.list_events()
        assert record.state is EventState.PENDING
        [attempt] = await outbox.attempts_of(record.event_id)
        assert attempt.status_code is None
        assert attempt.error is not None and "Connect" in attempt.error


async def test_exhausted_attempts_mark_the_event_failed_until_requeued(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    keypair: KeyPair,
    audio_wav: bytes,
) -> None:
    receiver.default = 503
    app = create_app(with_notify(settings_factory, receiver.url, notify_max_attempts=3))
    async with running(app) as http:
        response = await UploadApi(http, keypair).upload(audio_wav, chunk_size=200_000)
        assert response.json()["message"] == QUEUED
        notifier = notifier_of(app)
        later = utc_now()
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):
                later += timedelta(hours=1)
                assert (await notifier.deliver_due(now=later)).attempted == 1
        assert len(receiver.requests) == 3
        [record] = await notifier.outbox.list_events()
        assert record.state is EventState.FAILED
        assert record.attempts == 3
        assert record.last_status_code == 503
        failed_logs = [entry for entry in logs if entry["event"] == "notify.failed"]
        assert [entry["event_id"] for entry in failed_logs] == [record.event_id]
        counts = await notifier.outbox.counts_by_state()
        assert counts == {EventState.PENDING: 0, EventState.DELIVERED: 0, EventState.FAILED: 1}
        # Failed stays failed: no pass sends it again.
        assert (await notifier.deliver_due(now=later + timedelta(days=7))).attempted == 0
        assert len(receiver.requests) == 3

        # An operator re-queues it once the receiver is fixed.
        receiver.default = 200
        assert (await notifier.outbox.requeue(record.event_id, now=utc_now())).value == "requeued"
        assert (await notifier.deliver_due(now=utc_now())).delivered == 1
        assert [r.event_id for r in receiver.delivered()] == [record.event_id]
        assert len(await notifier.outbox.attempts_of(record.event_id)) == 4
        again = await notifier.outbox.requeue(record.event_id, now=utc_now())
        assert again.value == "already_delivered"


async def test_without_notify_url_no_event_is_written(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    app = create_app(settings_factory())
    async with running(app) as http:
        response = await UploadApi(http, keypair).upload(audio_wav, chunk_size=200_000)
        assert response.status_code == 200, response.text
        # Nobody was told, so the message does not claim it.
        assert response.json()["message"] == "File upload completed."
        container = app.state.container
        assert container.notifier is None
        async with container.engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(notify_events)) == 0


def test_backoff_starts_within_five_seconds_grows_and_is_capped() -> None:
    policy = DeliveryPolicy(max_attempts=12)
    rng = random.Random(3)
    firsts = [backoff_seconds(1, policy, rng) for _ in range(200)]
    assert all(2 <= gap <= 4 for gap in firsts)
    assert len({round(gap, 3) for gap in firsts}) > 100  # jittered, not synchronised
    assert all(4 <= backoff_seconds(2, policy, rng) <= 8 for _ in range(50))
    assert all(150 <= backoff_seconds(n, policy, rng) <= 300 for n in range(8, 40))
