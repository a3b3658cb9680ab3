"""The HTTP API: create_app(settings) -> FastAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from ..registry import hooks
from ..settings import Settings, load_settings
from ..system import System
from . import dashboard, errors
from .deps import require_token
from .routes import dead_letters, events, sagas
from .routes import system as system_routes
from .schemas import Problem

# Swagger UI 5 (it reads OpenAPI 3.1), vendored from swagger-ui-dist by
# scripts/vendor-swagger-ui: /docs works without internet.
SWAGGER_UI = Path(__file__).parent / "static" / "swagger-ui"
DESCRIPTION = """\
Define a `Saga` of `Step`s whose actions and compensations are Celery tasks; start, follow,
cancel and retry its runs here.

**Tokens.** When the server sets `SAGAKIT_API_TOKEN`, every `/api` route needs
`Authorization: Bearer <token>` (the **Authorize** button); `SAGAKIT_API_READ_TOKEN`, when
set, allows the GET routes only. `/healthz` and `/metrics` need a token only with
`SAGAKIT_API_PROTECT_SYSTEM=true`.
"""


def _auth_responses(settings: Settings) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "Bearer token missing or wrong."}
    }
    if settings.api_read_token:
        responses[403] = {
            "model": Problem,
            "description": "The read-only token, on a request that writes.",
        }
    return responses


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
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.system = system
    errors.install(app)
    settings = system.settings
    # The token is checked at router level, and only where one is set, so the OpenAPI
    # document declares the bearer scheme on exactly the routes that need it.
    guard = [Depends(require_token)] if settings.api_token else []
    auth = _auth_responses(settings) if guard else {}
    app.include_router(sagas.start_router(system.sagas), dependencies=guard, responses=auth)
    app.include_router(sagas.router, dependencies=guard, responses=auth)
    app.include_router(events.router, dependencies=guard, responses=auth)
    app.include_router(dead_letters.router, dependencies=guard, responses=auth)
    system_guard = guard if settings.api_protect_system else []
    app.include_router(
        system_routes.router, dependencies=system_guard, responses=auth if system_guard else {}
    )
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_UI), name="swagger")
    if system.tracing is not None:  # SAGAKIT_TRACING: a start request parents its saga
        from ..tracing.setup import instrument_api

        instrument_api(app)

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

    # The dashboard: its pages check the same tokens through a session cookie.
    dashboard.install(app, system)

    # Modules named by SAGAKIT_IMPORTS may add routes (e.g. GET /api/robots); every route
    # they add through the app's router is guarded like the others.
    app.router.dependencies.extend(guard)
    app.router.responses.update(auth)
    for hook in hooks(settings.imports, "register_api"):
        hook(app)
    if guard:
        _check_guarded(app)
    return app


def _check_guarded(app: FastAPI) -> None:
    """Refuse to serve an /api route that the token does not guard.

    Raises:
        RuntimeError: a route under /api bypasses the routers (e.g. ``app.mount``).
    """
    for route in app.routes:
        path = getattr(route, "path", "")
        if not (path == "/api" or path.startswith("/api/")):
            continue
        if isinstance(route, APIRoute) and any(
            dependency.dependency is require_token for dependency in route.dependencies
        ):
            continue
        raise RuntimeError(
            f"{path} is not guarded by SAGAKIT_API_TOKEN: add /api routes with "
            "app.include_router, app.get or app.post, which check the token"
        )
