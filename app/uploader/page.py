"""Routes of the uploader page: the HTML shell and its two bundle files."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.errors import NotFound
from app.settings import Settings

PAGE_PATH = "/uploader"
ASSETS_PATH = f"{PAGE_PATH}/assets"
BUNDLE_DIR = Path(__file__).parent / "web" / "dist"
BUNDLE_FILES = {
    "uploader.js": "text/javascript; charset=utf-8",
    "uploader.css": "text/css; charset=utf-8",
    "uploader.js.map": "application/json",
    "uploader.css.map": "application/json",
}

# Same origin only: the page talks to this service and nothing else. Uppy sets inline
# style attributes (progress bars), hence 'unsafe-inline' for styles, not for scripts;
# thumbnails of added files are blob: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def page_config(settings: Settings) -> dict[str, Any]:
    """What the script needs to know, rendered into the page."""
    return {
        "tus_endpoint": settings.tus_base_path,
        "status_path": "/upload/",
        "allowed_extensions": sorted(settings.allowed_audio_extensions),
        "max_file_size": settings.max_file_size,
    }


def render_page(settings: Settings) -> str:
    # `<` escaped so no value can close the <script> block it sits in.
    config = json.dumps(page_config(settings)).replace("<", "\\u003c")
    template = Template((Path(__file__).parent / "index.html").read_text(encoding="utf-8"))
    return template.substitute(assets=ASSETS_PATH, config=config)


def bundle_built() -> bool:
    return all((BUNDLE_DIR / name).is_file() for name in ("uploader.js", "uploader.css"))


NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Uploader not built</title>
<p>The uploader page's bundle has not been built. Run <code>./scripts/bootstrap</code>
(it needs Node.js and npm) and reload.</p>"""


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    html = render_page(settings)

    @router.get(PAGE_PATH)
    async def uploader_page() -> Response:
        if not bundle_built():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=PAGE_HEADERS)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @router.get(ASSETS_PATH + "/{name}")
    async def uploader_asset(name: str) -> Response:
        media_type = BUNDLE_FILES.get(name)
        if media_type is None or not (BUNDLE_DIR / name).is_file():
            raise NotFound()
        # Not content-hashed names: revalidate each time (cheap, by ETag/Last-Modified).
        return FileResponse(
            BUNDLE_DIR / name,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return router
