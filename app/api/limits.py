"""A cap on request bodies that are read whole (the JSON endpoints), enforced as the
bytes arrive: a declared Content-Length over the cap is refused before anything is
read, and an undeclared (chunked) body is cut off once it passes the cap.

Streamed paths (the chunk upload) are left alone: they enforce MAX_CHUNK_SIZE while
writing. Plain ASGI, so bodies still stream through untouched.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.envelope import error_response
from app.errors import RequestTooLarge


class BodySizeLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        streamed_paths: frozenset[str],
        streamed_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.streamed_paths = streamed_paths
        self.streamed_prefixes = streamed_prefixes

    def _streamed(self, path: str) -> bool:
        return path in self.streamed_paths or any(
            path == prefix or path.startswith(prefix + "/") for prefix in self.streamed_prefixes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._streamed(scope["path"]):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        details = {"max_body_bytes": limit}
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(RequestTooLarge(details=details))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body read; the 413 handler renders it.
                    raise HTTPException(413, "The request body is too large.")
            return message

        await self.app(scope, limited_receive, send)
