"""Collaborative multi-robot SLAM exploration, the reference saga of sagakit.

The pure simulation lives in `world`, `planning`, `sensing` and `mapping`; the services'
tables in `db`; the robot fleet in `fleet`; failure injection in `faults`; the saga
definition in `saga` and its step tasks in `steps`. Importing this package (for instance via
``SAGAKIT_IMPORTS=sagakit_examples.slam``) registers the ``slam`` saga and its Celery tasks.
"""

from . import steps
from .api import register_api
from .cli import register_cli
from .faults import Faults
from .saga import MissionInput, mission

__all__ = ["Faults", "MissionInput", "mission", "register_api", "register_cli", "steps"]
