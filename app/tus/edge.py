"""What the tus spec asks of every request and response at the endpoint, before routing:
`X-HTTP-Method-Override` (for environments that only send GET and POST), the version
check (412 with `Tus-Version` unless `Tus-Resumable: 1.0.0`; OPTIONS is exempt), and
`Tus-Resumable` on every response, errors included. Requests that carry
`Upload-Draft-Interop-Version` are the IETF draft's and pass untouched.
Plain ASGI, so bodies stream through."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.envelope import error_response
from app.errors import UnsupportedProtocolVersion
from app.tus.headers import TUS_VERSION

OVERRIDABLE_METHODS = frozenset({"HEAD", "PATCH", "DELETE", "OPTIONS", "GET", "POST"})


class TusEdgeMiddleware:
    def __init__(self, app: ASGIApp, *, base_path: str) -> None:
        self.app = app
        self.base = "/" + base_path.strip("/")

    def _is_ours(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_ours(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        override = headers.get("x-http-method-override", "").upper()
        if override in OVERRIDABLE_METHODS and scope["method"] == "POST":
            scope = {**scope, "method": override}
        if "upload-draft-interop-version" in headers:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "OPTIONS" and headers.get("tus-resumable") != TUS_VERSION:
            response = error_response(
                UnsupportedProtocolVersion(
                    "Tus-Resumable: 1.0.0 is required.", details={"supported": [TUS_VERSION]}
                )
            )
            response.headers["Tus-Version"] = TUS_VERSION
            response.headers["Tus-Resumable"] = TUS_VERSION
            await response(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Tus-Resumable"] = TUS_VERSION
            await send(message)

        await self.app(scope, receive, send_with_version)
