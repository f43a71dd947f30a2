"""Imports structlog and httpx without their optional console extras, before anything
else imports them (app.main imports this module first).

Both pull in rich and pygments when those happen to be installed (the CLI's typer
installs rich): structlog for its development console renderer, httpx for its
command-line client. The service renders JSON logs and never runs either, and the two
cost ~3.3 MB of memory for as long as it runs. A `None` entry in `sys.modules` makes an
import raise ImportError, which both libraries take as "extra not installed"; the
entries are removed afterwards, so code that really wants rich (the CLI) still gets it.
If structlog or httpx was imported already (a test run, the CLI), nothing changes.
"""

from __future__ import annotations

import sys

_EXTRAS = ("rich", "pygments")

if "structlog" not in sys.modules and "httpx" not in sys.modules:
    blocked = [name for name in _EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
        import structlog  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]
