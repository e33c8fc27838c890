"""The playground (docs/playground.md): GET /ui/ serves a page of plain HTML, CSS and JavaScript
from `static/` inside the package, and GET / redirects to it. Mounted only when MADE_UI is on.

The page uses the public API as any client would (the API key, when the server has one, is asked
for in the page and sent as `Authorization: Bearer`), so these routes hold no data and stay open
like /docs. Every file goes out with a Content-Security-Policy that allows this origin only and no
inline script or style: the page can reach no other host, and nothing injected into it runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

STATIC = Path(__file__).resolve().parent / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new version of the service serves its own page
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _assets() -> dict[str, Path]:
    """The files the page may fetch, by name: read from the package, nothing else is served."""
    return {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES}


def _file(path: Path) -> Response:
    # A few small files, read per request (the OS caches them): nothing held in the process.
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


router = APIRouter(include_in_schema=False)
ASSETS = _assets()


@router.get("/")
async def root() -> RedirectResponse:
    # Relative, so that a proxy serving the service under a prefix keeps it.
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui")
async def ui_without_slash() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui/")
async def page() -> Response:
    return _file(ASSETS["index.html"])


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, f"no such file of the playground: {name!r}")
    return _file(path)
