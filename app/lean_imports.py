"""Keeps what an idle service never uses out of its memory, before anything else imports
it (app.main imports this module first).

structlog pulls in rich and pygments when those happen to be installed (the CLI's typer
installs rich) for its development console renderer; httpx's command-line client pulls in
the same. The service renders JSON logs and never runs either (together ~3.3 MB). A
`None` entry in `sys.modules` makes an import raise ImportError, which both libraries
take as "extra not installed": structlog is imported here with rich and pygments so
blocked, and those entries are removed afterwards, so code that really wants rich (the
CLI) still gets it; `httpx._main` (httpx's CLI) stays blocked, because httpx itself is
only imported where it is used (JWKS fetches, webhooks), maybe long after start-up. For
the same reason aiobotocore is shown no httpx when it looks for one (at its first
import, for an HTTP backend the service does not use: it sends with aiohttp); httpx and
what it imports cost ~2 MB.

FastAPI imports pydantic.v1 for every route it builds, only to check that the route's
models are not pydantic v1 models, and takes ImportError as "none can be": the service
has none (measured: idle service 122.4 -> 121.3 MB). That entry stays until
`allow_pydantic_v1()` (app.main, once the served app is built), so a later import
still gets pydantic.v1.

If structlog or httpx was imported already (a test run, the CLI), nothing changes.

`sqlalchemy.ext.asyncio` is set up with its engine and result names only: its
`__init__` also imports the async ORM session, and through it all of SQLAlchemy's ORM
(~6 MiB of an idle process), which the service never uses (it runs Core statements on
an `AsyncEngine`). The package's other names (`AsyncSession`, …) still work: the first
look-up of one runs the package's own `__init__`, ORM and all, into the same module.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any

_EXTRAS = ("rich", "pygments")
_PYDANTIC_V1 = "pydantic.v1"
_HTTPX_CLI = "httpx._main"
_HTTPX_NAMES = ("httpx", "httpx2")

if "structlog" not in sys.modules and "httpx" not in sys.modules:
    if _PYDANTIC_V1 not in sys.modules:
        sys.modules[_PYDANTIC_V1] = None  # type: ignore[assignment]
    # Stays: httpx may be imported much later (the first webhook) and must not load its
    # command-line client then either.
    sys.modules[_HTTPX_CLI] = None  # type: ignore[assignment]
    blocked = [name for name in _EXTRAS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]
    # aiobotocore looks for httpx once, for a backend the service does not use (aiohttp).
    httpx_blocked = [name for name in _HTTPX_NAMES if name not in sys.modules]
    for name in httpx_blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import aiobotocore._httpx  # noqa: F401
    except ImportError:  # another aiobotocore layout: it then imports httpx as it likes
        pass
    finally:
        for name in httpx_blocked:
            del sys.modules[name]


_ASYNCIO_EXT = "sqlalchemy.ext.asyncio"
# What the package's __init__ takes from its engine and result modules.
_ENGINE_NAMES = (
    "async_engine_from_config",
    "AsyncConnection",
    "AsyncEngine",
    "AsyncTransaction",
    "create_async_engine",
    "create_async_pool_from_url",
)
_RESULT_NAMES = ("AsyncMappingResult", "AsyncResult", "AsyncScalarResult", "AsyncTupleResult")


def _asyncio_ext_without_orm() -> None:
    """Registers `sqlalchemy.ext.asyncio` with only its engine's names (module docstring)."""
    spec = importlib.util.find_spec(_ASYNCIO_EXT)
    if spec is None or spec.loader is None:
        return
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    sys.modules[_ASYNCIO_EXT] = package
    try:
        from sqlalchemy.ext.asyncio import engine, result
    except BaseException:
        del sys.modules[_ASYNCIO_EXT]
        raise
    # As the import system does for a package it imports: `sqlalchemy.ext.asyncio.X` works.
    setattr(sys.modules["sqlalchemy.ext"], "asyncio", package)  # noqa: B010
    for name in _ENGINE_NAMES:
        setattr(package, name, getattr(engine, name))
    for name in _RESULT_NAMES:
        setattr(package, name, getattr(result, name))

    # Another thread asking for a name while the real __init__ runs waits for it; the
    # __init__ itself looking one up (same thread) finds it or not, as in any import.
    lock = threading.RLock()
    state = "engine only"

    def complete(name: str) -> Any:
        # A name beyond the engine's: run the real __init__ (it imports the ORM) once.
        nonlocal state
        with lock:
            if state == "engine only":
                state = "completing"
                try:
                    loader.exec_module(package)
                except BaseException:
                    state = "engine only"  # raised as the import would; tried again later
                    raise
                state = "complete"
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {_ASYNCIO_EXT!r} has no attribute {name!r}") from None

    package.__getattr__ = complete  # type: ignore[method-assign]


if _ASYNCIO_EXT not in sys.modules:
    _asyncio_ext_without_orm()


def allow_pydantic_v1() -> None:
    """Lifts the pydantic.v1 block (module docstring) once the app's routes are built."""
    if _PYDANTIC_V1 in sys.modules and sys.modules[_PYDANTIC_V1] is None:
        del sys.modules[_PYDANTIC_V1]
