"""The dashboard and the API docs: ``GET /api/summary``, the page at ``/``, its files, and ``/docs``.

The page, its files and the docs are code, no data: :mod:`.auth` leaves them
open; ``/api/summary`` needs ``read`` like every other read.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from .context import Api
from .params import UNAVAILABLE
from .schemas import Summary

STATIC_DIR = Path(__file__).parent / "static"


def add_routes(router: APIRouter) -> None:
    """Declare ``GET /api/summary`` and the page at ``/`` on ``router`` (the app's own: see :mod:`.app`)."""
    router.get("/api/summary", response_model=Summary, tags=["dashboard"], responses=UNAVAILABLE)(api_summary)
    router.get("/", include_in_schema=False)(dashboard)


def add_docs_route(router: APIRouter) -> None:
    """Declare ``GET /docs`` on ``router``, after the mounts (the order the routes always had)."""
    router.get("/docs", include_in_schema=False)(docs)


def api_summary(api: Api) -> Summary:
    """Everything the dashboard shows: leader, pools, every node's utilization, recent outcomes."""
    return api.summary.get()


def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def docs(api: Api) -> HTMLResponse:
    # Swagger UI, from the local files when swagger_assets() found them, else from FastAPI's CDN.
    # (A comment, not a docstring: the route is out of the schema, and its description stays empty.)
    if api.swagger_assets is None:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="virtflow-scheduler API")
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="virtflow-scheduler API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )


def swagger_assets() -> Path | None:
    """The ``swagger-ui-py`` package's Swagger UI files, so ``/docs`` works without internet.

    None without that package: ``/docs`` then loads Swagger UI from a CDN.
    """
    try:
        local = Path(str(resources.files("swagger_ui") / "static"))
    except (ModuleNotFoundError, TypeError):
        return None
    return local if (local / "swagger-ui-bundle.js").is_file() else None


def mount_files(app: FastAPI, swagger: Path | None) -> None:
    """Serve the dashboard's files at ``/static`` and, when found, Swagger UI's at ``/docs/assets``.

    Called between :func:`add_routes` and :func:`add_docs_route`, so the
    routes keep the order they always had.
    """
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if swagger is not None:
        app.mount("/docs/assets", StaticFiles(directory=swagger), name="docs-assets")
