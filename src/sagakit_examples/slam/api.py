"""GET /api/robots: the fleet over HTTP."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from . import db, fleet


class Robot(BaseModel):
    """A robot and the saga holding it (None when free)."""

    id: int
    name: str
    held_by: str | None


def _fleet() -> list[Robot]:
    engine = db.get_engine()
    db.ensure_schema(engine)
    return [Robot.model_validate(r) for r in fleet.list_fleet(engine)]


def register_api(app: FastAPI) -> None:
    """Add the SLAM example's routes to the sagakit API."""
    router = APIRouter(tags=["slam"])

    @router.get("/api/robots", response_model=list[Robot])
    async def robots() -> list[Robot]:
        """The robot fleet, each robot with the saga that holds it."""
        return await run_in_threadpool(_fleet)

    app.include_router(router)
