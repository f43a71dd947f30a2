"""`PerRequestLogger`: assembled once per structlog configuration, and never stale."""

from __future__ import annotations

import json

import pytest
import structlog

from app.logging import PerRequestLogger, configure_logging


def test_per_request_logger_follows_every_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = PerRequestLogger("tests.logging")
    configure_logging("WARNING")
    capsys.readouterr()
    logger.info("quiet.event", n=1)
    assert capsys.readouterr().err == ""

    configure_logging("INFO")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id="r1")
    logger.info("loud.event", n=2)
    logger.log(30, "warned.event", n=3)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["n"], e["request_id"]) for e in lines] == [
        ("loud.event", "info", 2, "r1"),
        ("warned.event", "warning", 3, "r1"),
    ]
    assert all(e["timestamp"].endswith("Z") for e in lines)

    with structlog.testing.capture_logs() as captured:
        logger.info("captured.event", n=4)
    assert captured == [{"event": "captured.event", "n": 4, "log_level": "info"}]
    logger.info("after.capture", n=5)
    assert json.loads(capsys.readouterr().err)["event"] == "after.capture"
    structlog.contextvars.clear_contextvars()
