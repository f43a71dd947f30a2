"""create_app() and its lifespan: the one place where the parts are wired together.

`uvicorn app.main:app` reads the settings when it first asks for `app`, so importing
this module (in tests, in tools) neither reads the environment nor connects anywhere.

The process tunes glibc's malloc itself when the app is built (`tune_malloc`), so the
fast configuration is the one every deployment runs, with no environment to remember:
with glibc's defaults a streaming server takes up to one minor page fault per 4 KiB
received (large buffers are mapped and unmapped, the heap's top trimmed and regrown),
1.4-2.8x of a plain server's throughput (perf-notes; for this service mostly eager
flush's part buffers, bench/README.md); one arena keeps the part buffers that eager
flush reads in worker threads from lingering in an arena per thread, and lets
`IdleHeapTrimmer` give a burst's memory back once the process is idle.
"""

from __future__ import annotations

# First: before anything imports structlog or httpx (see the module).
from app import lean_imports as _lean_imports  # (not `import app.…`: binds `app`)

# isort: split
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
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
from app.tus.edge import TusEdgeMiddleware
from app.tus.routes import build_router as build_tus_router
from app.uploader.page import build_router as build_uploader_router

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, long_running: bool = False) -> FastAPI:
    """`long_running`: the served process (`uvicorn app.main:app`), which migrates the
    database in a child process so it never carries the migration machinery (~13 MB,
    storage.database.migrate); tests and tools that build apps in-process migrate in it."""
    tune_malloc()
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    verifier = build_verifier(settings)  # a bad key stops start-up here, not at first use
    metrics = (
        Metrics(cache_seconds=settings.metrics_cache_seconds) if settings.metrics_enabled else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = await build_container(
            settings, verifier, metrics, migrate_in_child_process=long_running
        )
        app.state.container = container
        settle_startup_heap()
        # Clean-up loop; on the exit stack so it stops before the parts it uses close.
        container.stack.push_async_callback(JanitorLoop(container).start().stop)
        container.stack.push_async_callback(IdleHeapTrimmer().start().stop)
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

    # Error responses are documented per route (app.api.openapi_errors). FastAPI's native
    # OpenTelemetry is off: the service exports its own metrics (app.metrics) and logs, and
    # with it on FastAPI asks OpenTelemetry for its global providers on every request
    # (~3% of the event loop's CPU for 1 KiB chunks) only to find none configured.
    app = FastAPI(
        title="Audio upload service",
        version="1.0.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.include_router(uploads.router)
    app.include_router(health.router)
    app.include_router(build_tus_router(settings.tus_base_path))
    if settings.uploader_page:
        app.include_router(build_uploader_router(settings))
    app.state.metrics = metrics

    app.add_middleware(TusEdgeMiddleware, base_path=settings.tus_base_path)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_json_body_bytes,
        streamed_paths=frozenset({"/upload/chunk"}),
        # tus and IETF appends stream into staging and enforce the upload's length there.
        streamed_prefixes=(settings.tus_base_path.rstrip("/"),),
    )
    install_http_edge(app, settings, metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


# mallopt(3) parameters (glibc's malloc.h), each with the environment variable that sets it
# at exec time; an operator who sets that variable (or its glibc.malloc tunable) keeps it.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_TUNING: tuple[tuple[int, str, str, int], ...] = (
    # Fixed thresholds also turn off glibc's sliding mmap threshold. 32 MiB is the largest
    # mmap threshold glibc takes on 64-bit: chunk and part buffers (<= 16 MiB) come from
    # the heap and are reused instead of mapped, faulted in and unmapped each time.
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "mmap_threshold", 32 * 1024 * 1024),
    # Free memory at the heap's top is given back only beyond 128 MiB, so body pieces do
    # not trim and regrow it; start-up still hands its garbage back (release_freed_heap).
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "trim_threshold", 128 * 1024 * 1024),
    # One arena: the part buffers eager flush reads in worker threads are freed into the
    # arena malloc_trim empties (glibc trims a thread arena's top only past the trim
    # threshold, so a second arena kept ~40 MB after every burst), and are reused by the
    # event loop's allocations instead of sitting in a second heap. Measured at 32 x 16
    # MiB streams: peak 232 -> 208 MB, after the idle trim 164 -> 134 MB; ingest CPU per
    # GiB no worse (the GIL serialises most allocations anyway). bench/README.md "Memory".
    (_M_ARENA_MAX, "MALLOC_ARENA_MAX", "arena_max", 1),
)


def tune_malloc() -> dict[str, int]:
    """Sets glibc malloc's parameters for a streaming server (module docstring), before
    the app starts any thread. Returns what it set, by environment variable name; empty
    without glibc. A parameter the environment sets (the variable, or its tunable in
    `GLIBC_TUNABLES`) is the operator's and left alone."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied = {}
    for parameter, variable, tunable, value in MALLOC_TUNING:
        if variable in os.environ or f"glibc.malloc.{tunable}=" in tunables:
            continue
        if mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1:
            applied[variable] = value
    return applied


def _libc_function(name: str) -> Any:
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), name, None) if library else None


def release_freed_heap() -> None:
    """Hands the heap memory that start-up allocated and freed (mostly botocore's JSON data
    files, parsed while the S3 client is built) back to the OS: ~5 MB of idle RSS that
    glibc would otherwise keep until reused. No-op without glibc."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def settle_startup_heap() -> None:
    """Once start-up is done: collect its garbage, then move every object that survived
    (modules, the app, the parts) to the collector's permanent generation, so later
    collections do not walk them again (and fork()ed children do not copy their pages
    back by touching them), and hand the heap memory start-up freed back to the OS."""
    gc.collect()
    gc.freeze()
    release_freed_heap()


class IdleHeapTrimmer:
    """Gives a burst's freed heap memory back to the OS once the process goes idle.

    tune_malloc keeps freed buffers for reuse (no trimming below 128 MiB), which is what
    makes streaming cheap, but it also means a burst of uploads leaves the process at its
    peak (measured: 32 x 16 MiB streams with eager flush, ~205 MB at the peak and still
    there once idle). Every `interval_seconds` this reads the process's CPU time (one
    syscall); after an interval busier than `busy_fraction` of a core, the first quiet
    interval runs malloc_trim(0) in a worker thread (back to ~133 MB there). Open
    sessions' background checks stay under 5%; nothing is trimmed while uploads stream,
    so a burst pays its page faults once, not per chunk. No-op without glibc."""

    def __init__(self, interval_seconds: float = 5.0, busy_fraction: float = 0.05) -> None:
        self.interval_seconds = interval_seconds
        self.busy_fraction = busy_fraction
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> IdleHeapTrimmer:
        if _libc_function("malloc_trim") is not None:
            self._task = asyncio.create_task(self._run(), name="idle-heap-trimmer")
        return self

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        busy_cpu_seconds = self.busy_fraction * self.interval_seconds
        last = time.process_time()
        worked_since_trim = False
        while True:
            await asyncio.sleep(self.interval_seconds)
            now = time.process_time()
            if now - last > busy_cpu_seconds:
                worked_since_trim = True
            elif worked_since_trim:
                worked_since_trim = False
                await asyncio.to_thread(release_freed_heap)
                self.trims += 1
                now = time.process_time()  # the trim's own CPU is not work
            last = now


class RequestIdMiddleware:
    """Binds a request id to every log line of a request and echoes it back.
    Plain ASGI (not BaseHTTPMiddleware) so request bodies stream through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _first_header(scope["headers"], b"x-request-id")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        echoed = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if any(name.lower() == b"x-request-id" for name, _ in headers):
                    MutableHeaders(scope=message)["X-Request-ID"] = request_id
                else:
                    # What MutableHeaders does when the response has none (every route).
                    message["headers"] = [*headers, echoed]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    """`Headers(scope=scope).get(name, "")` without building the mapping (ASGI servers
    give header names in lower case)."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def __getattr__(name: str) -> Any:
    if name == "app":
        application = create_app(long_running=True)
        _lean_imports.allow_pydantic_v1()
        globals()["app"] = application
        return application
    raise AttributeError(name)
