"""The live page: `GET /` and its two static files, served from the package (no build step, no CDN).

Only the files listed here are served, by name: a path is never joined to the file system, so no request can
reach another file. The page talks to `/ws_ctl` on the same host; its Content-Security-Policy lets it reach
nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

router = APIRouter()

STATIC: Final = Path(__file__).resolve().parent / "static"
FILES: Final = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(status_code=204)  # browsers ask; a 404 would be noise in every console


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in FILES:
        return JSONResponse({"error": "not_found", "detail": f"no static file {name[:64]!r}"}, status_code=404)
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
