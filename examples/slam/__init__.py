"""Collaborative multi-robot SLAM exploration, the reference saga of sagakit.

The pure simulation lives in `world`, `planning`, `sensing` and `mapping`; the services'
tables in `db`; the robot fleet in `fleet`; failure injection in `faults`; the saga
definition in `saga` and its step tasks in `steps`. Importing this package (for instance via
``SAGAKIT_IMPORTS=examples.slam``) registers the ``slam`` saga and its Celery tasks.
"""

from examples.slam import steps
from examples.slam.api import register_api
from examples.slam.cli import register_cli
from examples.slam.faults import Faults
from examples.slam.saga import MissionInput, mission

__all__ = ["Faults", "MissionInput", "mission", "register_api", "register_cli", "steps"]
