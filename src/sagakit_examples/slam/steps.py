"""The mission's step tasks: each service's own named Celery tasks.

Tasks are thin: the robot service's logic lives in `fleet`, the simulation in `world`,
`planning`, `routing`, `sensing`, `mapping` and `render`, and every task's local transaction
goes through `service.commit` (exactly once per step key, in the service's own database,
faults injected before the commit). What crosses services travels in step outputs: the
robots in allocate_robots', the routes in plan_routes', each local grid in its explore
branch's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagakit import NonRetryableError, StepContext, saga_task

from . import fleet
from .faults import branch_of
from .mapping import FREE_THRESHOLD, OCCUPIED_THRESHOLD, assess, fuse
from .planning import plan
from .render import Track, render_png
from .routing import corners, expand
from .sensing import encode_grid, explore_sector, grid_from_text, grid_to_text, scan_poses
from .service import (
    after_commit,
    commit,
    engine,
    map_path,
    mission_of,
    output_of,
    world_of,
    write_map,
)
from .settings import Service
from .tables import maps, plans, scans, utcnow

logger = logging.getLogger(__name__)


# --- robots ------------------------------------------------------------------------------


@saga_task("robots.allocate")
def allocate_robots(ctx: StepContext) -> Any:
    """Reserve the mission's robots, all or none, waiting for them up to its robot_wait."""
    mission = mission_of(ctx)
    now = started = utcnow()
    if mission.robot_wait > 0:
        with engine(Service.ROBOTS).begin() as conn:  # kept even when this attempt fails
            started = fleet.wait_started(conn, ctx.saga_id, mission.robots, now)
    waited = max(0.0, (now - started).total_seconds())

    def reserve(conn: sa.Connection) -> dict[str, Any]:
        try:
            robots = fleet.allocate(conn, ctx.saga_id, mission.robots)
        except fleet.NotEnoughRobots as short:
            raise fleet.shortage(short, waited, mission.robot_wait) from None
        return {"robots": robots, "waited": round(waited, 1)}

    output = commit(ctx, Service.ROBOTS, reserve)
    logger.info("reserved robots %s", [r["name"] for r in output.get("robots", [])])
    return output


def _release(ctx: StepContext) -> dict[str, Any]:
    def release(conn: sa.Connection) -> dict[str, Any]:
        released = fleet.release(conn, ctx.saga_id)
        output: dict[str, Any] = {"released": released.robots}
        if released.retired:
            output["retired"] = released.retired
        return output

    output: dict[str, Any] = commit(ctx, Service.ROBOTS, release)
    return output


@saga_task("robots.release")
def release_robots(ctx: StepContext) -> Any:
    """Compensation of allocate_robots: give back exactly this mission's robots."""
    output = _release(ctx)
    logger.info("released robots %s", output.get("released"))
    return output


@saga_task("robots.return")
def return_robots(ctx: StepContext) -> Any:
    """Last step: the mission is over, its robots go back to the pool."""
    output = _release(ctx)
    logger.info("returned robots %s", output.get("released"))
    return output


# --- planning ----------------------------------------------------------------------------


@saga_task("planning.plan")
def plan_routes(ctx: StepContext) -> Any:
    """Give every robot a sector and a route through it that drives around obstacles."""
    mission = mission_of(ctx)
    robots = [robot["name"] for robot in output_of(ctx, "allocate_robots")["robots"]]
    try:
        planned = plan(world_of(mission), len(robots))
    except ValueError as exc:
        raise NonRetryableError(f"cannot plan: {exc}") from exc
    routes = [
        {"robot": name, "corners": [list(c) for c in corners(r.cells)], "cells": len(r.cells)}
        for name, r in zip(robots, planned, strict=True)
    ]
    sectors = [r.sector.to_dict() for r in planned]

    def store(conn: sa.Connection) -> dict[str, Any]:
        conn.execute(
            plans.insert().values(
                saga_id=ctx.saga_id,
                robots=robots,
                sectors=sectors,
                routes=routes,
                created_at=utcnow(),
            )
        )
        return {"sectors": sectors, "routes": routes}

    output = commit(ctx, Service.PLANNING, store)
    logger.info("planned routes, cells per robot: %s", {r["robot"]: r["cells"] for r in routes})
    return output


@saga_task("planning.discard_plan")
def discard_plan(ctx: StepContext) -> Any:
    """Compensation of plan_routes: delete the mission's plan."""

    def discard(conn: sa.Connection) -> dict[str, Any]:
        deleted = conn.execute(plans.delete().where(plans.c.saga_id == ctx.saga_id)).rowcount
        return {"discarded": deleted}

    output = commit(ctx, Service.PLANNING, discard)
    logger.info("discarded the route plan: %s", output)
    return output


# --- exploration -------------------------------------------------------------------------


@saga_task("exploration.explore")
def explore(ctx: StepContext) -> Any:
    """Drive one robot along its planned route, building its local occupancy grid."""
    mission, robot, branch = mission_of(ctx), dict(ctx.item or {}), branch_of(ctx.step)
    routes = output_of(ctx, "plan_routes")["routes"]
    if branch is None or branch >= len(routes):
        raise NonRetryableError(f"{ctx.step} has no planned route")
    route = routes[branch]
    if route["robot"] != robot.get("name"):
        raise NonRetryableError(f"{ctx.step}: route of {route['robot']} given to {robot}")
    cells = expand(route["corners"])
    poses = scan_poses(cells)
    grid = explore_sector(world_of(mission), poses, seed=mission.seed * 1009 + branch)
    known = int(((grid > OCCUPIED_THRESHOLD) | (grid < FREE_THRESHOLD)).sum())

    def store(conn: sa.Connection) -> dict[str, Any]:
        conn.execute(
            scans.insert().values(
                saga_id=ctx.saga_id,
                robot=route["robot"],
                branch=branch,
                grid=encode_grid(grid),
                cells_driven=len(cells),
                known_cells=known,
                status="complete",
                updated_at=utcnow(),
            )
        )
        return {
            "robot": route["robot"],
            "cells_driven": len(cells),
            "scans": len(poses),
            "known_cells": known,
            "grid": grid_to_text(grid),
        }

    output = commit(ctx, Service.EXPLORATION, store)
    logger.info("%s drove %d cells, %d cells known", route["robot"], len(cells), known)
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

    output = commit(ctx, Service.EXPLORATION, abort)
    logger.info("recalled robot %s: %s", (ctx.item or {}).get("name"), output)
    return output


# --- mapping -----------------------------------------------------------------------------


@saga_task("mapping.integrate")
def integrate_maps(ctx: StepContext) -> Any:
    """Fuse the local grids, assess the map against the ground truth and render it."""
    mission = mission_of(ctx)
    routes = output_of(ctx, "plan_routes")["routes"]
    try:
        grids = [
            grid_from_text(output_of(ctx, f"explore[{i}]")["grid"]) for i in range(len(routes))
        ]
        world = world_of(mission)
        fused = fuse(grids)
        quality = assess(world, fused)
    except (KeyError, ValueError) as exc:
        raise NonRetryableError(f"cannot integrate the local maps: {exc}") from exc
    tracks = [Track(r["robot"], [(int(x), int(y)) for x, y in r["corners"]]) for r in routes]
    png = render_png(world, fused, tracks)
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

    output = commit(ctx, Service.MAPPING, store)

    def write() -> None:
        if write_map(ctx.saga_id, target):
            logger.info(
                "map integrated: coverage %.3f, accuracy %.3f, %s",
                quality.coverage,
                quality.accuracy,
                target,
            )

    # The file is written after the commit, from the stored map, so that a failed attempt
    # leaves no file behind; a repeated delivery writes it again.
    after_commit(write)
    return output


@saga_task("mapping.rollback")
def rollback_map(ctx: StepContext) -> Any:
    """Compensation of integrate_maps: delete the stored map and its file."""

    def delete(conn: sa.Connection) -> dict[str, Any]:
        deleted = conn.execute(maps.delete().where(maps.c.saga_id == ctx.saga_id)).rowcount
        return {"deleted": deleted}

    output = commit(ctx, Service.MAPPING, delete)
    stored = (ctx.results.get(ctx.step) or {}).get("map_path")
    for path in {map_path(ctx.saga_id), *([Path(stored)] if stored else [])}:
        path.unlink(missing_ok=True)
    logger.info("map rolled back: %s", output)
    return output
