"""Prometheus /metrics: the listed series move during a real upload against real S3."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.dev.keys import KeyPair
from app.main import create_app
from app.metrics import Metrics
from app.settings import Settings
from tests.conftest import running
from tests.support import UploadApi, assert_error, split

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    # Every scrape takes a fresh snapshot here: the tests compare gauges a moment apart.
    return settings_factory(metrics_cache_seconds=0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_follow_a_real_upload(
    client: httpx.AsyncClient, api: UploadApi, audio_wav: bytes
) -> None:
    before = await scrape(client)
    assert value(before, "upload_sessions", state="uploading") == 0
    assert ("upload_staging_bytes", frozenset()) in before

    session_id = await api.session()
    chunks = split(audio_wav, 200_000)
    await api.send_all(session_id, chunks[:1])
    middle = await scrape(client)
    chunk_requests = dict(method="POST", route="/upload/chunk", status="200")
    assert value(middle, "upload_http_requests_total", **chunk_requests) == 1
    assert value(middle, "upload_chunk_duration_seconds_count") == 1
    assert value(middle, "upload_http_received_bytes_total", route="/upload/chunk") > len(chunks[0])
    assert value(middle, "upload_sessions", state="uploading") == 1
    assert value(middle, "upload_staging_bytes") == len(chunks[0])

    for index, chunk in enumerate(chunks[1:], start=1):
        assert (await api.chunk(session_id, index, chunk)).status_code == 200
    response = await api.complete(session_id, len(chunks))
    assert response.status_code == 200, response.text

    after = await scrape(client)
    assert value(after, "upload_http_requests_total", **chunk_requests) == len(chunks)
    assert value(after, "upload_chunk_duration_seconds_count") == len(chunks)
    assert value(after, "upload_http_received_bytes_total", route="/upload/chunk") > len(audio_wav)
    assert value(after, "upload_complete_duration_seconds_count") == 1
    assert value(after, "upload_complete_duration_seconds_sum") > 0
    assert (
        value(
            after,
            "upload_http_requests_total",
            method="POST",
            route="/upload/complete",
            status="200",
        )
        == 1
    )
    assert value(after, "upload_sessions", state="uploading") == 0
    assert value(after, "upload_sessions", state="completed") == 1
    assert value(after, "upload_staging_bytes") == 0


async def test_routes_are_labelled_by_template_and_failures_by_status(
    client: httpx.AsyncClient, api: UploadApi
) -> None:
    session_id = await api.session()
    assert (await api.status(session_id)).status_code == 200
    assert_error(await api.status(session_id, sub="someone-else"), 404, "session_not_found")
    assert_error(await client.get("/no/such/path"), 404, "not_found")
    samples = await scrape(client)
    template = "/upload/{upload_session_id}"
    assert value(samples, "upload_http_requests_total", method="GET", route=template, status="200")
    assert value(samples, "upload_http_requests_total", method="GET", route=template, status="404")
    assert value(
        samples, "upload_http_requests_total", method="GET", route="unmatched", status="404"
    )
    assert not any(session_id in str(labels) for _, labels in samples)


async def test_s3_errors_are_counted_by_operation(
    settings_factory: Callable[..., Settings], keypair: KeyPair, audio_wav: bytes
) -> None:
    # A bucket that does not exist: every object call fails on the real S3 server.
    app = create_app(settings_factory(s3_bucket_name="no-such-bucket-here"))
    async with running(app) as client:
        api = UploadApi(client, keypair)
        session_id = await api.session()
        await api.send_all(session_id, [audio_wav])
        assert_error(await api.complete(session_id, 1), 503, "storage_unavailable")
        samples = await scrape(client)
    assert value(samples, "upload_s3_errors_total", operation="create_multipart_upload") >= 1
    assert value(samples, "upload_sessions", state="uploading") == 1  # still completable


async def test_each_app_has_its_own_registry(settings_factory: Callable[..., Settings]) -> None:
    first, second = create_app(settings_factory()), create_app(settings_factory())
    async with running(first) as one, running(second) as two:
        for _ in range(3):
            assert (await one.get("/healthz")).status_code == 200
        assert (await two.get("/healthz")).status_code == 200
        healthz = dict(method="GET", route="/healthz", status="200")
        assert value(await scrape(one), "upload_http_requests_total", **healthz) == 3
        assert value(await scrape(two), "upload_http_requests_total", **healthz) == 1


async def test_metrics_can_be_turned_off(settings_factory: Callable[..., Settings]) -> None:
    async with running(create_app(settings_factory(metrics_enabled=False))) as client:
        assert_error(await client.get("/metrics"), 404, "not_found")
        assert (await client.get("/healthz")).status_code == 200


async def test_a_failing_gauge_provider_is_left_out_and_counted() -> None:
    metrics = Metrics(provider_timeout_seconds=0.2)

    async def pending() -> dict[tuple[str, ...], float]:
        return {(): 7.0}

    async def broken() -> dict[tuple[str, ...], float]:
        raise ConnectionError("database went away")

    async def stuck() -> dict[tuple[str, ...], float]:
        await asyncio.Event().wait()
        return {}

    metrics.add_gauge_provider("upload_outbox_pending_events", "Pending events.", pending)
    metrics.add_gauge_provider("upload_outbox_failed_events", "Failed events.", broken)
    metrics.add_gauge_provider("upload_stuck", "Never answers.", stuck)
    await metrics.refresh()
    families = {family.name: family for family in metrics.gauge_families()}
    assert families["upload_outbox_pending_events"].samples[0].value == 7.0
    assert "upload_outbox_failed_events" not in families
    assert "upload_stuck" not in families
    errors: dict[str, Any] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "upload_metrics_provider_errors_total":
                errors[sample.labels["gauge"]] = sample.value
    assert errors == {"upload_outbox_failed_events": 1.0, "upload_stuck": 1.0}
