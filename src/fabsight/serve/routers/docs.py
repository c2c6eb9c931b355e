"""``/docs`` (Swagger UI) and ``/redoc`` served from this machine, for fab networks without internet.

FastAPI's own pages load their JavaScript and CSS from a CDN, which leaves a blank page on
an air-gapped network. Here the files come from the ``fastapi-offline`` package (Swagger UI
and ReDoc bundles shipped on PyPI), mounted at :data:`ASSETS`; without that package the
pages say so and point at ``/openapi.json`` instead of reaching out.
"""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)

#: Where the Swagger UI / ReDoc files are served.
ASSETS = "/docs-assets"
#: The package that ships them.
ASSETS_PACKAGE = "fastapi_offline"

_MISSING = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fabsight API</title></head>
<body><h1>fabsight API</h1><p>The interactive documentation needs the <code>fastapi-offline</code> package
(its Swagger UI and ReDoc files are served from this machine). The OpenAPI schema is at
<a href="{root}/openapi.json">/openapi.json</a>.</p></body></html>"""


def _installed() -> bool:
    return importlib.util.find_spec(ASSETS_PACKAGE) is not None


def assets() -> StaticFiles | None:
    """The static files of the docs pages, or None when the package is not installed."""
    return StaticFiles(packages=[(ASSETS_PACKAGE, "static")]) if _installed() else None


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    if not _installed():
        return HTMLResponse(_MISSING.format(root=root))
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="fabsight API",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # the default posts the schema to a public validator
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    if not _installed():
        return HTMLResponse(_MISSING.format(root=root))
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="fabsight API",
        redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
        with_google_fonts=False,
    )
