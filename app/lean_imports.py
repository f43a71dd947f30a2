"""Imports structlog and httpx without their optional console extras, before anything
else imports them (app.main imports this module first), and keeps FastAPI from loading
pydantic.v1 while the served app is built.

Both pull in rich and pygments when those happen to be installed (the CLI's typer
installs rich): structlog for its development console renderer, httpx for its
command-line client. The service renders JSON logs and never runs either, and the two
cost ~3.3 MB of memory for as long as it runs. A `None` entry in `sys.modules` makes an
import raise ImportError, which both libraries take as "extra not installed"; the
entries are removed afterwards, so code that really wants rich (the CLI) still gets it.

FastAPI imports pydantic.v1 for every route it builds, only to check that the route's
models are not pydantic v1 models, and takes ImportError as "none can be": the service
has none (measured: idle service 122.4 -> 121.3 MB). That entry stays until
`allow_pydantic_v1()` (app.main, once the served app is built), so a later import
still gets pydantic.v1.

If structlog or httpx was imported already (a test run, the CLI), nothing changes.
"""

from __future__ import annotations

import sys

_EXTRAS = ("rich", "pygments")
_PYDANTIC_V1 = "pydantic.v1"

if "structlog" not in sys.modules and "httpx" not in sys.modules:
    if _PYDANTIC_V1 not in sys.modules:
        sys.modules[_PYDANTIC_V1] = None  # type: ignore[assignment]
    blocked = [name for name in _EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
        import structlog  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]


def allow_pydantic_v1() -> None:
    """Lifts the pydantic.v1 block (module docstring) once the app's routes are built."""
    if _PYDANTIC_V1 in sys.modules and sys.modules[_PYDANTIC_V1] is None:
        del sys.modules[_PYDANTIC_V1]
