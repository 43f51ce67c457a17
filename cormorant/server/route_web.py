"""GET /, /playground, /console and /web/{name}: the browser playground and operator console.

The pages are static files shipped inside the package (cormorant/server/web/: plain HTML, CSS
and JavaScript modules, no build step, nothing from a CDN). They hold no data: every call they
make goes to the JSON API with the key the user typed in (kept in the browser only), under the
same route table as any other client, so the shells are public and the data is not (the
console's calls need the admin scope). Every page and asset is sent with a strict
Content-Security-Policy (scripts, styles and connections from this origin only, no inline
script, no framing) and `nosniff`; only files listed in `ASSETS` are served.
Imports starlette and the stdlib.
"""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

from cormorant.server.errors import APIError

router = APIRouter(include_in_schema=False)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "cache-control": "no-cache",
}
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = {"/": "playground.html", "/playground": "playground.html", "/console": "console.html"}
# The assets under /web/: a fixed list, so no request can name any other file.
ASSETS = ("app.css", "api.js", "markdown.js", "playground.js", "chat.js", "console.js",
          "charts.js", "prom.js", "icon.svg")
# Markup both pages share, never served alone: a page's `<!-- part: NAME -->` line becomes it.
PARTS = ("key-dialog.html",)


def _read(name: str) -> bytes:
    return resources.files("cormorant.server").joinpath("web", name).read_bytes()


def _load(name: str) -> tuple[bytes, str]:
    body = _read(name)
    if name.endswith(".html"):
        for part in PARTS:
            body = body.replace(f"<!-- part: {part} -->\n".encode(), _read(part))
    return body, TYPES[name[name.rindex("."):]]


def _files() -> dict[str, tuple[bytes, str]]:
    """Read once at import: the package's files do not change under a running server."""
    return {name: _load(name) for name in {*PAGES.values(), *ASSETS}}


FILES = _files()


def _send(name: str) -> Response:
    body, media_type = FILES[name]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def root() -> Response:
    return _send(PAGES["/"])


@router.get("/playground")
async def playground() -> Response:
    return _send(PAGES["/playground"])


@router.get("/console")
async def console() -> Response:
    return _send(PAGES["/console"])


@router.get("/web/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise APIError(404, "Not found.", code="not_found")
    return _send(name)
