"""The mission's step tasks: each service's own named Celery tasks.

Tasks are thin: the robot service's logic lives in `fleet`, the simulation in
`world`, `planning`, `sensing` and `mapping`, and every task's local transaction goes through
`service.commit` (exactly once per step key, faults injected before the commit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagakit import NonRetryableError, StepContext, saga_task

from . import fleet
from .db import get_engine, maps, plans, scans, utcnow
from .faults import branch_of
from .mapping import FREE_THRESHOLD, OCCUPIED_THRESHOLD, assess, fuse, render_png
from .planning import coverage_path, split_sectors
from .sensing import decode_grid, encode_grid, explore_sector
from .service import (
    commit,
    load_plan,
    map_path,
    mission_of,
    robots_of,
    world_of,
    write_map,
)

logger = logging.getLogger(__name__)

SPACING = 4
"""Cells between a robot's sweep lines (the sensor sees 10 cells)."""


# --- robots ------------------------------------------------------------------------------


@saga_task("robots.allocate")
def allocate_robots(ctx: StepContext) -> Any:
    """Reserve the mission's robots, all or none."""
    count = mission_of(ctx).robots
    output = commit(ctx, lambda conn: {"robots": fleet.allocate(conn, ctx.saga_id, count)})
    logger.info("reserved robots %s", [r["name"] for r in output.get("robots", [])])
    return output


@saga_task("robots.release")
def release_robots(ctx: StepContext) -> Any:
    """Compensation of allocate_robots: give back exactly this mission's robots."""
    output = commit(ctx, lambda conn: {"released": fleet.release(conn, ctx.saga_id)})
    logger.info("released robots %s", output.get("released"))
    return output


@saga_task("robots.return")
def return_robots(ctx: StepContext) -> Any:
    """Last step: the mission is over, its robots go back to the pool."""
    output = commit(ctx, lambda conn: {"released": fleet.release(conn, ctx.saga_id)})
    logger.info("returned robots %s", output.get("released"))
    return output


# --- planning ----------------------------------------------------------------------------


@saga_task("planning.plan")
def plan_routes(ctx: StepContext) -> Any:
    """Split the area into one sector per robot and plan a coverage path through each."""
    mission, robots = mission_of(ctx), robots_of(ctx)
    world = world_of(mission)
    try:
        sectors = split_sectors(world, len(robots))
    except ValueError as exc:
        raise NonRetryableError(f"cannot plan: {exc}") from exc
    paths = [coverage_path(world, sector, SPACING) for sector in sectors]

    def store(conn: sa.Connection) -> dict[str, Any]:
        conn.execute(
            plans.insert().values(
                saga_id=ctx.saga_id,
                robots=[r["id"] for r in robots],
                sectors=[s.to_dict() for s in sectors],
                paths=[[list(p) for p in path] for path in paths],
                created_at=utcnow(),
            )
        )
        waypoints = {r["name"]: len(path) for r, path in zip(robots, paths, strict=True)}
        return {"sectors": len(sectors), "waypoints": waypoints}

    output = commit(ctx, store)
    logger.info("planned sectors, waypoints per robot: %s", output.get("waypoints"))
    return output


@saga_task("planning.discard_plan")
def discard_plan(ctx: StepContext) -> Any:
    """Compensation of plan_routes: delete the mission's plan."""

    def discard(conn: sa.Connection) -> dict[str, Any]:
        deleted = conn.execute(plans.delete().where(plans.c.saga_id == ctx.saga_id)).rowcount
        return {"discarded": deleted}

    output = commit(ctx, discard)
    logger.info("discarded the route plan: %s", output)
    return output


# --- exploration -------------------------------------------------------------------------


@saga_task("exploration.explore")
def explore(ctx: StepContext) -> Any:
    """Drive one robot along its path, building its local occupancy grid."""
    mission, robot, branch = mission_of(ctx), dict(ctx.item), branch_of(ctx.step)
    if branch is None:
        raise NonRetryableError(f"{ctx.step} is not an explore branch")
    path = [(int(x), int(y)) for x, y in load_plan(ctx.saga_id).paths[branch]]
    grid = explore_sector(world_of(mission), path, seed=mission.seed * 1009 + branch)
    known = int(((grid > OCCUPIED_THRESHOLD) | (grid < FREE_THRESHOLD)).sum())

    def store(conn: sa.Connection) -> dict[str, Any]:
        conn.execute(
            scans.insert().values(
                saga_id=ctx.saga_id,
                robot_id=robot["id"],
                branch=branch,
                grid=encode_grid(grid),
                waypoints_done=len(path),
                known_cells=known,
                status="complete",
                updated_at=utcnow(),
            )
        )
        return {"robot": robot["name"], "waypoints": len(path), "known_cells": known}

    output = commit(ctx, store)
    logger.info("%s explored %d waypoints, %d cells known", robot["name"], len(path), known)
    return output


@saga_task("exploration.abort")
def abort_exploration(ctx: StepContext) -> Any:
    """Compensation of an explore branch: recall the robot and drop its scans."""
    branch = branch_of(ctx.step)

    def abort(conn: sa.Connection) -> dict[str, Any]:
        aborted = conn.execute(
            scans.update()
            .where(scans.c.saga_id == ctx.saga_id, scans.c.branch == branch)
            .values(status="aborted", grid=None, updated_at=utcnow())
        ).rowcount
        return {"aborted": aborted}

    output = commit(ctx, abort)
    logger.info("recalled robot %s: %s", (ctx.item or {}).get("name"), output)
    return output


# --- mapping -----------------------------------------------------------------------------


@saga_task("mapping.integrate")
def integrate_maps(ctx: StepContext) -> Any:
    """Fuse the local grids, assess the map against the ground truth and render it."""
    mission, plan = mission_of(ctx), load_plan(ctx.saga_id)
    with get_engine().connect() as conn:
        rows = (
            conn.execute(
                sa.select(scans.c.grid)
                .where(scans.c.saga_id == ctx.saga_id, scans.c.status == "complete")
                .order_by(scans.c.branch)
            )
            .scalars()
            .all()
        )
    if len(rows) != len(plan.paths):
        raise NonRetryableError(f"expected {len(plan.paths)} scans, found {len(rows)}")
    world = world_of(mission)
    fused = fuse([decode_grid(data) for data in rows])
    quality = assess(world, fused)
    scale = max(1, min(6, 1200 // max(world.width, world.height)))
    png = render_png(world, fused, [[(x, y) for x, y in p] for p in plan.paths], scale=scale)
    target = map_path(ctx.saga_id)

    def store(conn: sa.Connection) -> dict[str, Any]:
        conn.execute(
            maps.insert().values(
                saga_id=ctx.saga_id,
                png=png,
                coverage=quality.coverage,
                accuracy=quality.accuracy,
                path=str(target),
                stored_at=utcnow(),
            )
        )
        return {
            "coverage": round(quality.coverage, 4),
            "accuracy": round(quality.accuracy, 4),
            "map_path": str(target),
        }

    output = commit(ctx, store)
    # The file is written after the commit, from the stored map, so that a failed attempt
    # leaves no file behind; a repeated delivery writes it again.
    if write_map(ctx.saga_id, target):
        logger.info(
            "map integrated: coverage %.3f, accuracy %.3f, %s",
            quality.coverage,
            quality.accuracy,
            target,
        )
    return output


@saga_task("mapping.rollback")
def rollback_map(ctx: StepContext) -> Any:
    """Compensation of integrate_maps: delete the stored map and its file."""

    def delete(conn: sa.Connection) -> dict[str, Any]:
        deleted = conn.execute(maps.delete().where(maps.c.saga_id == ctx.saga_id)).rowcount
        return {"deleted": deleted}

    output = commit(ctx, delete)
    stored = (ctx.results.get(ctx.step) or {}).get("map_path")
    for path in {map_path(ctx.saga_id), *([Path(stored)] if stored else [])}:
        path.unlink(missing_ok=True)
    logger.info("map rolled back: %s", output)
    return output
