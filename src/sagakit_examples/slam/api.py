"""GET /api/robots: the fleet over HTTP."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from . import databases, fleet
from .settings import Service


class Robot(BaseModel):
    """A robot, its state and the saga holding it (None when none does)."""

    id: int
    name: str
    state: Literal["free", "in_use", "retiring", "retired"]
    held_by: str | None


def _fleet() -> list[Robot]:
    engine = databases.current().engine(Service.ROBOTS)
    listed = fleet.list_fleet(engine, include_retired=True)
    return [Robot.model_validate(robot) for robot in listed]


def register(app: FastAPI) -> None:
    """Add the SLAM example's routes to `app`."""
    router = APIRouter(tags=["slam"])

    @router.get("/api/robots", response_model=list[Robot])
    async def robots() -> list[Robot]:
        """Every robot the fleet ever had: its state and the saga that holds it."""
        return await run_in_threadpool(_fleet)

    app.include_router(router)
