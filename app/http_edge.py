"""What sits between the network and the routes: proxy headers, CORS, request metrics
and the access log, and the Prometheus `/metrics` endpoint.

Order, outermost first: ProxyHeaders (so everything below sees the real client address
and scheme), ObservedRequests (so preflights and refusals are counted and logged too),
CORS, then the routes. ProxyHeaders is installed here rather than left to uvicorn's
flags so that forwarded headers are trusted only from FORWARDED_ALLOW_IPS however the
service is started; applying it after uvicorn already did is harmless, because the
rewritten client is then no trusted proxy.
"""

from __future__ import annotations

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
    if metrics is not None:

        async def serve_metrics() -> Response:
            await metrics.refresh()
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        # An API route (not a bare Starlette one) so the router records its template.
        app.add_api_route("/metrics", serve_metrics, methods=["GET"], include_in_schema=False)
