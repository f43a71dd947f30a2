"""create_app() and its lifespan: the one place where the parts are wired together.

`uvicorn app.main:app` reads the settings when it first asks for `app`, so importing
this module (in tests, in tools) neither reads the environment nor connects anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import health, uploads
from app.api.envelope import install_error_handlers
from app.api.limits import BodySizeLimitMiddleware
from app.container import build_container, build_verifier
from app.http_edge import install_http_edge, serve_metrics_port
from app.janitor import JanitorLoop
from app.logging import configure_logging
from app.metrics import Metrics
from app.settings import Settings, load_settings

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    verifier = build_verifier(settings)  # a bad key stops start-up here, not at first use
    metrics = (
        Metrics(cache_seconds=settings.metrics_cache_seconds) if settings.metrics_enabled else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = await build_container(settings, verifier, metrics)
        app.state.container = container
        release_freed_heap()
        # Clean-up loop; on the exit stack so it stops before the parts it uses close.
        container.stack.push_async_callback(JanitorLoop(container).start().stop)
        if metrics is not None and settings.metrics_port is not None:
            metrics_server = await serve_metrics_port(
                metrics, settings.metrics_host, settings.metrics_port
            )
            container.stack.callback(metrics_server.close)
        log.info(
            "service.started",
            database=container.engine.dialect.name,
            bucket=settings.s3_bucket_name,
        )
        try:
            yield
        finally:
            app.state.container = None
            await container.close()
            log.info("service.stopped")

    # Error responses are documented per route (app.api.openapi_errors).
    app = FastAPI(title="Audio upload service", version="1.0.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(uploads.router)
    app.include_router(health.router)
    app.state.metrics = metrics

    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_json_body_bytes,
        streamed_paths=frozenset({"/upload/chunk"}),
    )
    install_http_edge(app, settings, metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def release_freed_heap() -> None:
    """Hands the heap memory that start-up allocated and freed (mostly botocore's JSON data
    files, parsed while the S3 client is built) back to the OS: ~5 MB of idle RSS that
    glibc would otherwise keep until reused. No-op without glibc."""
    library = ctypes.util.find_library("c")
    malloc_trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
    if malloc_trim is not None:
        malloc_trim(0)


class RequestIdMiddleware:
    """Binds a request id to every log line of a request and echoes it back.
    Plain ASGI (not BaseHTTPMiddleware) so request bodies stream through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def __getattr__(name: str) -> Any:
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
