"""Prometheus metrics: one registry per app, request metrics and the access log.

Invariants:
* every app owns its `CollectorRegistry` (never the process-global one), so tests and
  tools can build several apps in one process;
* labels are bounded: requests are labelled by route *template* (`/upload/{upload_session_id}`),
  never by raw path; unmatched paths share the label `unmatched`; methods outside
  KNOWN_METHODS share the label `other` (a client picks the method, and each new label
  value would be a new series kept for the life of the process);
* gauges that live in the database or on disk (sessions by state, staging bytes, and
  whatever else registers a provider, e.g. the notification outbox) are read at scrape
  time by async "gauge providers", each under a deadline, and served from that snapshot;
  a provider that fails or times out is left out of the scrape and counted, never fatal;
  one snapshot serves every scrape for `cache_seconds`, and is taken by one scrape at a
  time (app.single_flight): a flood of /metrics costs what one scrape costs;
* `ObservedRequestsMiddleware` is plain ASGI: it counts request-body bytes as they pass
  through `receive` and never buffers a body, so streamed chunks stay streamed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging import PerRequestLogger
from app.single_flight import SingleFlight

access_log = PerRequestLogger("app.access")
log = structlog.get_logger(__name__)

LabelValues = tuple[str, ...]
GaugeValues = Mapping[LabelValues, float]
GaugeProvider = Callable[[], Awaitable[GaugeValues]]
"""Returns the gauge's current values keyed by label values (`()` for an unlabelled gauge)."""

PROVIDER_TIMEOUT_SECONDS = 5.0
UNMATCHED_ROUTE = "unmatched"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
DEFAULT_CACHE_SECONDS = 5.0

# Chunks of up to 64 MiB over LANs and WANs: from milliseconds to minutes.
CHUNK_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A completion streams the whole file into S3: seconds for small files, minutes for GiBs.
COMPLETE_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class _GaugeSpec:
    name: str
    documentation: str
    labels: tuple[str, ...]
    provider: GaugeProvider


class Metrics:
    """The service's metrics, in a registry of their own."""

    def __init__(
        self,
        *,
        provider_timeout_seconds: float = PROVIDER_TIMEOUT_SECONDS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ) -> None:
        self.provider_timeout_seconds = provider_timeout_seconds
        self.snapshots = SingleFlight(self.refresh, ttl_seconds=cache_seconds)
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "upload_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "upload_http_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its response.",
            ["method", "route"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "upload_http_received_bytes",
            "Request body bytes received, by route template.",
            ["route"],
            registry=registry,
        )
        self.chunk_seconds = Histogram(
            "upload_chunk_duration_seconds",
            "Time to receive and store one chunk (successful POST /upload/chunk).",
            buckets=CHUNK_SECONDS_BUCKETS,
            registry=registry,
        )
        self.complete_seconds = Histogram(
            "upload_complete_duration_seconds",
            "Time to complete an upload (successful POST /upload/complete).",
            buckets=COMPLETE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.s3_errors = Counter(
            "upload_s3_errors",
            "S3 calls that failed, by operation (create_multipart_upload, upload_part...).",
            ["operation"],
            registry=registry,
        )
        self.gauge_provider_errors = Counter(
            "upload_metrics_provider_errors",
            "Scrape-time gauge providers that failed or timed out, by gauge name.",
            ["gauge"],
            registry=registry,
        )
        self._gauges: dict[str, _GaugeSpec] = {}
        self._snapshot: dict[str, GaugeValues] = {}
        registry.register(_SnapshotCollector(self))
        # Each request's labelled children, looked up once per label values (bounded: the
        # labels are): `labels()` builds and validates its key under a lock every call.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._received_children: dict[str, Counter] = {}

    # ---------------------------------------------------------------- gauges
    def add_gauge_provider(
        self,
        name: str,
        documentation: str,
        provider: GaugeProvider,
        labels: Iterable[str] = (),
    ) -> None:
        """Register a gauge read at scrape time, e.g. the outbox's pending events:
        `metrics.add_gauge_provider("upload_outbox_pending_events", "...", outbox.pending)`.
        Registering a name again replaces its provider (a restarted lifespan rewires)."""
        self._gauges[name] = _GaugeSpec(name, documentation, tuple(labels), provider)

    async def refresh(self) -> None:
        """Ask every provider for its current values, concurrently, each under a deadline."""
        specs = list(self._gauges.values())
        results = await asyncio.gather(
            *(asyncio.wait_for(spec.provider(), self.provider_timeout_seconds) for spec in specs),
            return_exceptions=True,
        )
        snapshot: dict[str, GaugeValues] = {}
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self.gauge_provider_errors.labels(gauge=spec.name).inc()
                log.warning(
                    "metrics.provider_failed", gauge=spec.name, error_type=type(result).__name__
                )
                continue
            snapshot[spec.name] = result
        self._snapshot = snapshot

    async def refresh_cached(self) -> None:
        """`refresh`, at most once per `cache_seconds`, one at a time (what scrapes call)."""
        await self.snapshots.get()

    def gauge_families(self) -> list[Metric]:
        families: list[Metric] = []
        for name, values in self._snapshot.items():
            spec = self._gauges[name]
            family = GaugeMetricFamily(name, spec.documentation, labels=spec.labels)
            for label_values, value in sorted(values.items()):
                family.add_metric(list(label_values), value)
            families.append(family)
        return families

    # ------------------------------------------------------------- callbacks
    def count_s3_error(self, operation: str) -> None:
        self.s3_errors.labels(operation=operation).inc()

    def observe_request(
        self, *, method: str, route: str, status: int, duration_seconds: float, body_bytes: int
    ) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method=method, route=route, status=str(status)),
                self.request_seconds.labels(method=method, route=route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(duration_seconds)
        if body_bytes:
            received = self._received_children.get(route)
            if received is None:
                received = self._received_children[route] = self.received_bytes.labels(route=route)
            received.inc(body_bytes)
        if 200 <= status < 300 and method == "POST":
            if route == "/upload/chunk":
                self.chunk_seconds.observe(duration_seconds)
            elif route == "/upload/complete":
                self.complete_seconds.observe(duration_seconds)


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.gauge_families()

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe up front: the families depend on the providers registered.
        return []


class ObservedRequestsMiddleware:
    """Counts and times every HTTP request, and writes one `http.request` log event for it.

    The event carries method, route template, path (never the query string, which could
    hold a token), status, duration, request-body bytes, client IP (as forwarded by a
    trusted proxy) and whatever the request bound to the log context (request_id,
    session_id). Headers are never logged."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        body_bytes = 0
        status = 500  # what the client sees if the app fails before answering

        async def counting_receive() -> Message:
            nonlocal body_bytes
            message = await receive()
            if message["type"] == "http.request":
                body_bytes += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            duration_seconds = time.perf_counter() - started
            route = route_template(scope)
            method = method_label(str(scope.get("method", "")))
            if self.metrics is not None:
                self.metrics.observe_request(
                    method=method,
                    route=route,
                    status=status,
                    duration_seconds=duration_seconds,
                    body_bytes=body_bytes,
                )
            client = scope.get("client")
            # Probes and scrapes arrive every few seconds: keep them out of INFO logs.
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            access_log.log(
                level,
                "http.request",
                method=method,
                route=route,
                path=str(scope.get("path", "")),
                status=status,
                duration_ms=round(duration_seconds * 1000, 3),
                bytes=body_bytes,
                client_ip=client[0] if client else None,
                scheme=scope.get("scheme"),
            )


def method_label(method: str) -> str:
    """The request's method as a bounded label (also what the access log shows)."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def route_template(scope: Scope) -> str:
    """The matched route's path template; the router leaves it in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE
