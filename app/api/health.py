"""Liveness and readiness probes (no authentication).

Readiness pings the database, the bucket and the staging directory: three round trips
that anyone who reaches the port can ask for. The verdict is computed by one request at a
time and served for READY_CACHE_SECONDS (app.single_flight), so a flood of /readyz costs
about what one call costs and never delays uploads.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import AppContainer
from app.api.envelope import error_body, success
from app.api.openapi_errors import error_responses
from app.container import Container
from app.single_flight import SingleFlight

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 5.0


@router.get("/healthz", responses=error_responses())
async def healthz() -> Any:
    return success("ok")


@router.get("/readyz", responses=error_responses())
async def readyz(request: Request, container: AppContainer) -> Any:
    results = await _readiness(request, container).get()
    if all(value == "ok" for value in results.values()):
        return success("ready", {"checks": results})
    return JSONResponse(
        error_body("not_ready", "The service is not ready.", {"checks": results}), status_code=503
    )


def _readiness(request: Request, container: Container) -> SingleFlight[dict[str, str]]:
    """The app's shared readiness computation (one per container: a restarted lifespan
    gets a fresh one)."""
    state = request.app.state
    cached: tuple[Container, SingleFlight[dict[str, str]]] | None = getattr(
        state, "readiness", None
    )
    if cached is None or cached[0] is not container:

        async def compute() -> dict[str, str]:
            return await check_readiness(container)

        cached = (
            container,
            SingleFlight(compute, ttl_seconds=container.settings.ready_cache_seconds),
        )
        state.readiness = cached
    return cached[1]


async def check_readiness(container: Container) -> dict[str, str]:
    checks = {
        "database": container.store.ping(),
        "s3": container.objects.check(),
        "staging": container.staging.check(),
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, READY_TIMEOUT_SECONDS)
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - any failure means not ready
            results[name] = "unavailable"
    return results
