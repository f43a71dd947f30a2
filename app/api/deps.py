"""Dependencies a route can ask for by type: `service: Uploads, principal: CurrentPrincipal`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.container import Container
from app.errors import InvalidToken, NotReady
from app.uploads.models import Principal
from app.uploads.service import UploadService

_bearer = HTTPBearer(auto_error=False, description="RS256 JWT issued by the main service.")


# `async def` although nothing is awaited: FastAPI runs a plain `def` dependency in a
# worker thread, a thread hand-off on every request (and up to 40 more threads under
# concurrent uploads) for a dictionary look-up.
async def get_container(request: Request) -> Container:
    return container_of(request)


def container_of(request: Request) -> Container:
    container: Container | None = getattr(request.app.state, "container", None)
    if container is None:
        raise NotReady()
    return container


AppContainer = Annotated[Container, Depends(get_container)]


async def get_upload_service(container: AppContainer) -> UploadService:
    return container.uploads


async def get_principal(
    container: AppContainer,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise InvalidToken("A bearer token is required.")
    return await container.verifier.verify(credentials.credentials)


async def principal_from(container: Container, authorization: str | None) -> Principal:
    """`get_principal` for a route that resolves its own dependencies (the chunk route):
    the same reading of the header as `HTTPBearer(auto_error=False)`, the same error."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        raise InvalidToken("A bearer token is required.")
    return await container.verifier.verify(token)


Uploads = Annotated[UploadService, Depends(get_upload_service)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
