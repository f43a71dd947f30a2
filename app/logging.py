"""Structured JSON logs: named events with fields, one line each."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Our `http.request` event (app.metrics) is the access log; uvicorn's own plain-text
    # access lines would only repeat it without route, request id or session id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic announces each of its autogenerate plugins at INFO on every migration; the
    # revisions it applies ("Running upgrade ...") stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class PerRequestLogger:
    """`structlog.get_logger(name)` for events logged on every request (the access log,
    a stored chunk): the bound logger is assembled once per structlog configuration, not
    on every call as the lazy proxy does (caching it for good, structlog's
    `cache_logger_on_first_use`, would keep a logger of an earlier configuration: tests
    and tools configure logging again, with other levels, or capture the events)."""

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)
        # The configuration it was built for and the logger, as one value: a thread that
        # reads it never pairs a logger with another configuration's key.
        self._built: tuple[tuple[object, ...], Any] | None = None

    def _bound(self) -> Any:
        config = structlog.get_config()
        key = (
            config["processors"],
            config["wrapper_class"],
            config["logger_factory"],
            config["context_class"],
        )
        built = self._built
        if built is None or any(now is not then for now, then in zip(key, built[0], strict=True)):
            built = (key, self._proxy.bind())
            self._built = built
        return built[1]

    def info(self, event: str, **fields: Any) -> None:
        self._bound().info(event, **fields)

    def log(self, level: int, event: str, **fields: Any) -> None:
        self._bound().log(level, event, **fields)
