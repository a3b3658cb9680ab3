"""/api/dead-letters: the choreography events a service gave up on, and their replay."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from ...choreography.bus import Bus
from ...core.errors import InvalidInput
from ..deps import SystemDep
from ..schemas import Problem

router = APIRouter(prefix="/api/dead-letters", tags=["choreography"])
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "SAGAKIT_REDIS_URL is not set (field names it)."},
    503: {"model": Problem, "description": "The choreography's Redis is unreachable."},
}
DeadId = Annotated[str, Path(pattern=r"^\d{1,20}-\d{1,20}$", description="Dead letter id.")]


class DeadLetterView(BaseModel):
    """An event a consumer group gave up on after its deliveries, with its last error."""

    id: str
    group: str
    error: str
    deliveries: int
    event: dict[str, Any]


class Replayed(BaseModel):
    """The dead letter, published again as a new stream entry."""

    id: str
    replayed_as: str


@lru_cache(maxsize=4)
def _bus(url: str, stream: str) -> Bus:
    return Bus.from_url(url, stream)


def bus_of(system: SystemDep) -> Bus:
    settings = system.settings
    if not settings.redis_url:
        raise InvalidInput("SAGAKIT_REDIS_URL", "choreographed sagas need Redis: it is not set")
    return _bus(settings.redis_url, settings.choreography_stream)


@router.get("", response_model=list[DeadLetterView], responses=ERRORS)
def list_dead_letters(system: SystemDep) -> list[dict[str, Any]]:
    """The dead letters, oldest first (at most 100)."""
    return [letter.view() for letter in bus_of(system).dead_letters()]


@router.post(
    "/{dead_id}/replay",
    response_model=Replayed,
    responses={**ERRORS, 404: {"model": Problem, "description": "No dead letter with that id."}},
)
def replay_dead_letter(dead_id: DeadId, system: SystemDep) -> Replayed:
    """Publish the event again (after the fault is fixed); each group that handled it
    already finds it in its inbox."""
    return Replayed(id=dead_id, replayed_as=bus_of(system).replay(dead_id))
