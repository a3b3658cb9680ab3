"""The HTTP API: create_app(settings) -> FastAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from .. import __doc__ as package_doc
from ..registry import hooks
from ..settings import Settings, load_settings
from ..system import System
from . import errors
from .routes import events, sagas
from .routes import system as system_routes

# Swagger UI 5 (it reads OpenAPI 3.1), vendored from swagger-ui-dist by
# scripts/vendor-swagger-ui: /docs works without internet.
SWAGGER_UI = Path(__file__).parent / "static" / "swagger-ui"


def create_app(settings: Settings | None = None, *, system: System | None = None) -> FastAPI:
    """Build the API around one System (built from `settings` unless given)."""
    system = system or System(settings or load_settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if system.settings.embedded:
            system.start_embedded()  # embedded default: sagas run inside the API process
        yield
        system.close()

    app = FastAPI(
        title="sagakit",
        version="0.1.0",
        summary="Durable sagas on Celery.",
        description=(package_doc or "").strip() + "\n\nMutating routes require "
        "`Authorization: Bearer $SAGAKIT_API_TOKEN` when that setting is set.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.system = system
    errors.install(app)
    app.include_router(sagas.router)
    app.include_router(events.router)
    app.include_router(system_routes.router)
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_UI), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="sagakit API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
            # No validator badge: it would send the document to an online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    # Modules named by SAGAKIT_IMPORTS may add routes (e.g. GET /api/robots).
    for hook in hooks(system.settings.imports, "register_api"):
        hook(app)
    return app
