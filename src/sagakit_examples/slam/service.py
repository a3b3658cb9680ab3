"""Plumbing shared by the mission's step tasks: one exactly-once transaction per step.

Every action and compensation is one local transaction in the services' database, made
exactly-once by `sagakit.idempotency.once` on the saga's step key. Injected faults (see
`sagakit_examples.slam.faults`) fire inside that transaction, after the work and before the commit,
so a failed attempt leaves nothing behind. A compensation also *fences* its action: it
records the action's key, so an action attempt that timed out and arrives late does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagakit import NonRetryableError, StepContext
from sagakit.idempotency import once

from .db import get_engine, maps, plans
from .saga import MissionInput
from .world import World, generate_world

FENCED = {"fenced": True}
"""Result recorded under an action's key by a compensation that ran before the action."""


def mission_of(ctx: StepContext) -> MissionInput:
    """The mission's parameters (the saga input, validated when the saga started)."""
    return MissionInput.model_validate(dict(ctx.input))


def robots_of(ctx: StepContext) -> list[dict[str, Any]]:
    """The robots allocate_robots reserved (empty before it has completed)."""
    output = ctx.results.get("allocate_robots") or {}
    return list(output.get("robots", []))


def world_of(mission: MissionInput) -> World:
    """The mission's ground-truth world (deterministic, so every service rebuilds it)."""
    return generate_world(mission.area, mission.seed, mission.width, mission.height)


def commit(ctx: StepContext, work: Callable[[sa.Connection], Any]) -> Any:
    """Run `work(conn)` once per step key in one transaction; inject faults before the commit.

    Returns:
        What `work` returned, the first time; the same result on every repeat.
    """
    mission = mission_of(ctx)
    mission.faults.delay(ctx.step)
    with get_engine().begin() as conn:
        if ctx.direction == "compensation":
            once(conn, f"{ctx.saga_id}:{ctx.step}:action", lambda: FENCED)
        result = once(conn, ctx.key, lambda: work(conn))
        mission.faults.check(ctx, branches=len(robots_of(ctx)), seed=mission.seed)
    return result


def load_plan(saga_id: str) -> Any:
    """The stored route plan of `saga_id`. Raises NonRetryableError when there is none."""
    with get_engine().connect() as conn:
        plan = conn.execute(sa.select(plans).where(plans.c.saga_id == saga_id)).first()
    if plan is None:
        raise NonRetryableError(f"no route plan stored for saga {saga_id}")
    return plan


def map_path(saga_id: str) -> Path:
    """Where the map of `saga_id` is written: ``$SLAM_OUTPUT_DIR`` or ``./out/maps``."""
    return Path(os.environ.get("SLAM_OUTPUT_DIR") or "out/maps").resolve() / f"{saga_id}.png"


def write_map(saga_id: str, target: Path) -> bool:
    """Write the stored map of `saga_id` to `target` atomically; False if none is stored."""
    with get_engine().connect() as conn:
        png = conn.execute(sa.select(maps.c.png).where(maps.c.saga_id == saga_id)).scalar()
    if png is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(png)
    partial.replace(target)
    return True
