"""GET /docs: Swagger UI from files shipped in a wheel (swagger-ui-bundle), so it works offline.

FastAPI's default docs page loads Swagger UI's script and CSS from a CDN; the server must work
on a machine with no network (the same rule as the dashboard), so the page points at
`/docs-static/`, served from the `swagger_ui_bundle` package. Without that package /docs
says how to get it and /openapi.json still works.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles


def swagger_ui_folder() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    folder = Path(swagger_ui_bundle.swagger_ui_path)
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_offline_docs(app: FastAPI) -> None:
    folder = swagger_ui_folder()
    if folder is not None:
        app.mount("/docs-static", StaticFiles(directory=folder), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(
                "<!doctype html><title>interpsuite API</title><p>The interactive docs need the "
                "<code>swagger-ui-bundle</code> package: <code>pip install 'interpsuite[server]'</code>. "
                'The schema is at <a href="/openapi.json">/openapi.json</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )
