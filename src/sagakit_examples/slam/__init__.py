"""Collaborative multi-robot SLAM exploration, the reference saga of sagakit.

The pure simulation lives in `world`, `planning`, `routing`, `sensing`, `mapping` and
`render`; the services' settings, tables and databases in `settings`, `tables` and
`databases`; the robot fleet in `fleet`; failure injection in `faults`; the saga definition
in `saga` and its step tasks in `steps`; the same mission choreographed (services reacting
to events, ``slam_choreographed``) in `choreography`. Importing this package (for instance via
``SAGAKIT_IMPORTS=sagakit_examples.slam``, the default) registers the ``slam`` saga and its
Celery tasks, the ``sagakit robots`` commands, the ``GET /api/robots`` route and the
dashboard's robots panel and mission map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import steps
from .choreography import participants
from .choreography import script as choreographed
from .cli import register_cli
from .faults import Faults
from .saga import MissionInput, mission

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sagakit.api.dashboard import Dashboard


def register_api(app: FastAPI) -> None:
    """Add the SLAM example's routes to the sagakit API.

    FastAPI is imported only here: workers and the CLI run without the ``api`` extra.
    """
    from .api import register

    register(app)


def register_dashboard(dashboard: Dashboard) -> None:
    """Add the SLAM example's panels to the sagakit dashboard (robots, the mission map)."""
    from .dashboard import register

    register(dashboard)


__all__ = [
    "Faults",
    "MissionInput",
    "choreographed",
    "mission",
    "participants",
    "register_api",
    "register_cli",
    "register_dashboard",
    "steps",
]
