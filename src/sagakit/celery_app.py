"""The Celery app built from the settings, for Celery's own commands.

``celery -A sagakit.celery_app flower`` (what ``sagakit up`` and docker-compose run) or
``celery -A sagakit.celery_app inspect stats`` then see the broker from
``SAGAKIT_BROKER_URL`` and every step task registered by ``SAGAKIT_IMPORTS``, without a
broker URL on their command line. Nothing in sagakit imports this module: importing it reads
the environment, which only entry points may do.
"""

from __future__ import annotations

from typing import Any

from .settings import load_settings
from .system import System

app: Any = System(load_settings(), migrate=False).celery
