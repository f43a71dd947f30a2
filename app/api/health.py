"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import AppContainer
from app.api.envelope import error_body, success
from app.api.openapi_errors import error_responses

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 5.0


@router.get("/healthz", responses=error_responses())
async def healthz() -> Any:
    return success("ok")


@router.get("/readyz", responses=error_responses())
async def readyz(container: AppContainer) -> Any:
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
    if all(value == "ok" for value in results.values()):
        return success("ready", {"checks": results})
    return JSONResponse(
        error_body("not_ready", "The service is not ready.", {"checks": results}), status_code=503
    )
