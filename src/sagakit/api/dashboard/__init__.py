"""The saga dashboard: server-rendered pages over the read side, with live updates.

`install(app, system)` adds its pages, forms, live streams and static files to the API app,
and runs the ``register_dashboard`` hooks of the modules named by ``SAGAKIT_IMPORTS`` (see
`panels.Dashboard`). Everything it serves comes from the package: it works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ...registry import hooks
from ...system import System
from . import actions, live, pages
from .panels import Dashboard, Panel

STATIC = Path(__file__).resolve().parents[1] / "static" / "dashboard"


def install(app: FastAPI, system: System) -> Dashboard:
    """Serve the dashboard from `app`; return its panel registry."""
    dashboard = Dashboard()
    app.state.dashboard = dashboard
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(live.router)
    app.mount("/static/dashboard", StaticFiles(directory=STATIC), name="dashboard")
    for hook in hooks(system.settings.imports, "register_dashboard"):
        hook(dashboard)
    return dashboard


__all__ = ["Dashboard", "Panel", "install"]
