"""``GET /docs``: Swagger UI on ``/openapi.json``, every file served by the read API itself.

Swagger UI's files come from the ``swagger-ui-py`` package (its ``swagger_ui/static``
directory: Swagger UI 5, which renders OpenAPI 3.1); the page and the script that starts
Swagger UI are ours, in ``readapi/static``. Everything is read (and compressed) once per
process, when the routes are registered; no request reaches the file system or another host.

- ``GET /docs``: the page (``text/html``, ``Cache-Control: no-cache``, a Content-Security-Policy
  allowing scripts and styles from this origin only; Swagger UI sets style attributes).
- ``GET /docs/static/{file}``: one of ``ASSET_NAMES``, with its content type, gzip when the
  client accepts it and ``Cache-Control: public, max-age=3600``; any other name answers 404.

"Try it out" sends the requests from the browser to this origin; the credentials are entered
under "Authorize" (the document's ``AppId`` and ``AppToken`` security schemes).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from readapi.errors import ApiError

PAGE_ROUTE = "/docs"
ASSET_ROUTE = "/docs/static/{file}"
OUR_STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILE = "docs-page.html"
# Served under ASSET_ROUTE: Swagger UI's files, then ours.
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
OUR_FILES = ("docs-init.js",)
ASSET_NAMES = (*SWAGGER_UI_FILES, *OUR_FILES)

_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
_COMPRESSED_SUFFIXES = frozenset({".js", ".css"})
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
ASSET_CACHE = "public, max-age=3600"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str


def swagger_ui_dir() -> Path:
    """Swagger UI's directory in the installed ``swagger-ui-py`` (its package is not imported:
    only the files are used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed: /docs cannot be served")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _asset(path: Path) -> Asset:
    try:
        body = path.read_bytes()
    except OSError as error:
        raise RuntimeError(f"documentation asset missing: {path}") from error
    gzipped = None
    if path.suffix in _COMPRESSED_SUFFIXES:
        gzipped = gzip.compress(body, compresslevel=6, mtime=0)
    return Asset(body, gzipped, _CONTENT_TYPES[path.suffix])


@functools.cache
def load_assets() -> Mapping[str, Asset]:
    """Every file of ``ASSET_NAMES``, read once per process."""
    swagger_ui = swagger_ui_dir()
    assets = {name: _asset(swagger_ui / name) for name in SWAGGER_UI_FILES}
    assets.update({name: _asset(OUR_STATIC_DIR / name) for name in OUR_FILES})
    return assets


@functools.cache
def page() -> bytes:
    """The HTML of ``GET /docs``."""
    return (OUR_STATIC_DIR / PAGE_FILE).read_bytes()


async def docs(request: web.Request) -> web.Response:
    return web.Response(
        body=page(),
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": "no-cache",
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    asset = load_assets().get(name)
    if asset is None:
        raise ApiError(
            404, "not_found", "No such file.", f"No documentation file {name[:100]!r}."
        )
    headers = {
        "Content-Type": asset.content_type,
        "Cache-Control": ASSET_CACHE,
        "X-Content-Type-Options": "nosniff",
    }
    body = asset.body
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def docs_routes() -> tuple[tuple[str, Handler], ...]:
    """The page's routes (path, handler); reads the files now, so that a missing one stops
    the app at its start rather than at the first visit."""
    load_assets()
    page()
    return (PAGE_ROUTE, docs), (ASSET_ROUTE, docs_asset)
