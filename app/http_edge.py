"""What sits between the network and the routes: proxy headers, CORS, request metrics
and the access log, and the Prometheus `/metrics` endpoint.

Order, outermost first: ProxyHeaders (so everything below sees the real client address
and scheme), ObservedRequests (so preflights and refusals are counted and logged too),
CORS, then the routes. ProxyHeaders is installed here rather than left to uvicorn's
flags so that forwarded headers are trusted only from FORWARDED_ALLOW_IPS however the
service is started; applying it after uvicorn already did is harmless, because the
rewritten client is then no trusted proxy.

`/metrics` is served on the API port, or, with METRICS_PORT, only on that port, by a
minimal HTTP/1.0-style responder (`serve_metrics_port`): one GET per connection, request
head capped at METRICS_HEAD_MAX_BYTES and METRICS_HEAD_TIMEOUT_SECONDS, so the port can
be opened to scrapers alone and firewalled apart from the API. It binds with
SO_REUSEPORT: with several uvicorn workers each one listens on it, and a scrape reaches
one of them (as on the API port, metrics are per process).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.metrics import Metrics, ObservedRequestsMiddleware
from app.settings import Settings

CORS_METHODS = ("GET", "POST", "DELETE", "HEAD", "PATCH")
# The tus and IETF resumable-upload headers (app.tus, app.ietf) come after ours.
CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Requested-With",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Content-Disposition",
)
CORS_EXPOSED_HEADERS = (
    "X-Request-ID",
    "WWW-Authenticate",
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Complete",
    "Upload-Limit",
    "Upload-Draft-Interop-Version",
    "X-Upload-State",
)
CORS_MAX_AGE_SECONDS = 600


def install_http_edge(app: FastAPI, settings: Settings, metrics: Metrics | None) -> None:
    """Add the edge middlewares (call before any middleware that must wrap them)."""
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
            # Bearer tokens travel in a header, never in cookies: no credentials mode.
            allow_credentials=False,
            max_age=CORS_MAX_AGE_SECONDS,
        )
    app.add_middleware(ObservedRequestsMiddleware, metrics=metrics)
    app.add_middleware(
        ProxyHeadersMiddleware,
        trusted_hosts=[host.strip() for host in settings.forwarded_allow_ips.split(",")],
    )
    if metrics is not None and settings.metrics_port is None:

        async def serve_metrics() -> Response:
            await metrics.refresh_cached()
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        # An API route (not a bare Starlette one) so the router records its template.
        app.add_api_route("/metrics", serve_metrics, methods=["GET"], include_in_schema=False)


METRICS_HEAD_MAX_BYTES = 8192
METRICS_HEAD_TIMEOUT_SECONDS = 10.0


async def serve_metrics_port(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Serve `GET /metrics` (and nothing else) on its own port; close the returned server
    at shutdown."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), METRICS_HEAD_TIMEOUT_SECONDS
            )
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            path = request_line[1].split(b"?", 1)[0] if len(request_line) == 3 else b""
            if request_line[0] == b"GET" and path == b"/metrics":
                await metrics.refresh_cached()
                status, content_type = b"200 OK", CONTENT_TYPE_LATEST.encode()
                body = generate_latest(metrics.registry)
            else:
                status, content_type, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + content_type
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sends junk or too slowly gets the connection closed
        finally:
            writer.close()

    return await asyncio.start_server(
        answer, host, port, limit=METRICS_HEAD_MAX_BYTES, reuse_port=True
    )
