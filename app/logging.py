"""Structured JSON logs: named events with fields, one line each."""

from __future__ import annotations

import logging
import sys

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
