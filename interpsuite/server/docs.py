"""GET /docs: Swagger UI from files shipped in a wheel, so it works offline.

FastAPI's default docs pages load their scripts and CSS from a CDN; the server must work on a
machine with no network (the same rule as the dashboard), so the pages point at
`/docs-static/`, served from the `fastapi-offline` package's copy of Swagger UI 5 (Swagger UI 4
cannot read the OpenAPI 3.1 schema FastAPI writes). Only its static files are used; the app is
ours. No /redoc: ReDoc's page fetches its logo from a CDN. Without that package /docs says how
to get it and /openapi.json still works.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
MISSING = (
    "<!doctype html><title>interpsuite API</title><p>The interactive docs need the "
    "<code>fastapi-offline</code> package: <code>pip install 'interpsuite[server]'</code>. "
    'The schema is at <a href="/openapi.json">/openapi.json</a>.</p>'
)


def docs_assets_folder() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def install_offline_docs(app: FastAPI) -> None:
    folder = docs_assets_folder()
    if folder is not None:
        app.mount("/docs-static", StaticFiles(directory=folder), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(MISSING)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon.png",
        )
