"""Choreographed sagas: services react to each other's events on a Redis Stream.

No orchestrator sends steps: each service (a `Participant`) handles the events it declares
in its own consumer group, with its local transaction, its inbox row and the events it
emits committed together (`participant`), over a bus that reclaims what dead consumers
left and dead-letters what never succeeds (`bus`). A `Tracker` folds the events into the
saga log through the saga's declared `Script`, so a choreographed saga is listed, shown
and measured like an orchestrated one, and times out steps whose events never came.

Layers: above the engine and the saga log (the tracker writes through them), below the
CLI and the API.
"""

from __future__ import annotations

from ..runtime.tasks import step_function
from .bus import Bus, DeadLetter, DeadLetterNotFound
from .events import BadEvent, Delivery, SagaEvent
from .participant import Local, Participant, Runner, after_commit, joined
from .script import Script, Track
from .setup import Choreography, discover
from .tracker import GROUP, Tracker

__all__ = [
    "GROUP",
    "BadEvent",
    "Bus",
    "Choreography",
    "DeadLetter",
    "DeadLetterNotFound",
    "Delivery",
    "Local",
    "Participant",
    "Runner",
    "SagaEvent",
    "Script",
    "Track",
    "Tracker",
    "after_commit",
    "discover",
    "joined",
    "step_function",
]
