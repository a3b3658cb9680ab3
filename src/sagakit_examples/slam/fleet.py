"""The robot service: reserve robots for a mission and give them back.

A robot held by a saga carries that saga's id in ``slam_robots.held_by`` and has one open row
in ``slam_allocations``; a partial unique index allows at most one open row per robot, so the
database itself refuses a double booking. Functions taking `conn` run inside the caller's
transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sagakit import NonRetryableError

from .db import allocations, robots, utcnow

FOREVER = datetime.max.replace(tzinfo=UTC)


class RobotsBusy(RuntimeError):
    """Enough robots are free, but concurrent transactions have some locked: try again."""


def allocate(
    conn: sa.Connection, saga_id: str, count: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Reserve `count` free robots for `saga_id`, all or none.

    On PostgreSQL the free rows are picked with ``FOR UPDATE SKIP LOCKED``, so concurrent
    missions never wait on each other or pick the same robot; on SQLite the transaction
    already holds the database's write lock.

    Returns:
        The reserved robots as ``{"id": ..., "name": ...}``, ordered by id.

    Raises:
        NonRetryableError: If fewer than `count` robots are free (nothing is changed).
        RobotsBusy: If enough are free but some are locked by concurrent transactions
            (PostgreSQL only; retryable, nothing is changed).
    """
    now = now or utcnow()
    candidates = (
        sa.select(robots.c.id)
        .where(robots.c.held_by.is_(None))
        .order_by(robots.c.id)
        .limit(count)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    taken = conn.execute(
        sa.update(robots)
        .where(robots.c.id.in_(candidates), robots.c.held_by.is_(None))
        .values(held_by=saga_id)
        .returning(robots.c.id, robots.c.name)
    ).all()
    if len(taken) < count:
        # Raising rolls back the caller's transaction, and with it the partial update.
        visible = conn.execute(
            sa.select(sa.func.count()).select_from(robots).where(robots.c.held_by.is_(None))
        ).scalar_one()
        free = visible + len(taken)
        if free >= count:  # enough robots, but other transactions hold some of their rows
            raise RobotsBusy(f"robots are busy: need {count}, got {len(taken)} unlocked")
        raise NonRetryableError(f"not enough free robots: need {count}, {free} free")
    reserved = sorted(
        ({"id": row.id, "name": row.name} for row in taken), key=lambda robot: robot["id"]
    )
    conn.execute(
        allocations.insert(),
        [
            {"robot_id": robot["id"], "saga_id": saga_id, "allocated_at": now, "released_at": None}
            for robot in reserved
        ],
    )
    return reserved


def release(conn: sa.Connection, saga_id: str, now: datetime | None = None) -> list[int]:
    """Return exactly the robots `saga_id` holds to the pool; a no-op when it holds none.

    Returns:
        The ids of the robots released by this call.
    """
    now = now or utcnow()
    held = (
        conn.execute(
            sa.update(robots)
            .where(robots.c.held_by == saga_id)
            .values(held_by=None)
            .returning(robots.c.id)
        )
        .scalars()
        .all()
    )
    conn.execute(
        sa.update(allocations)
        .where(allocations.c.saga_id == saga_id, allocations.c.released_at.is_(None))
        .values(released_at=now)
    )
    return sorted(held)


def held_by(engine: sa.Engine, saga_id: str) -> list[int]:
    """Ids of the robots `saga_id` holds now."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(robots.c.id).where(robots.c.held_by == saga_id).order_by(robots.c.id)
            )
            .scalars()
            .all()
        )
    return list(rows)


def list_fleet(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every robot as ``{"id", "name", "held_by"}`` (None when free), ordered by id."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(robots.c.id, robots.c.name, robots.c.held_by).order_by(robots.c.id)
        ).all()
    return [{"id": row.id, "name": row.name, "held_by": row.held_by} for row in rows]


def allocation_overlaps(engine: sa.Engine) -> list[dict[str, Any]]:
    """Pairs of allocations of one robot whose ``[allocated_at, released_at)`` overlap.

    The semantic lock guarantees there are none; tests assert the list is empty.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(allocations).order_by(allocations.c.robot_id, allocations.c.allocated_at)
        ).all()
    by_robot: dict[int, list[Any]] = {}
    for row in rows:
        by_robot.setdefault(row.robot_id, []).append(row)
    overlaps: list[dict[str, Any]] = []
    for robot_id, spans in by_robot.items():
        for index, first in enumerate(spans):
            for second in spans[index + 1 :]:
                if first.allocated_at < _end(second) and second.allocated_at < _end(first):
                    overlaps.append(
                        {
                            "robot_id": robot_id,
                            "allocations": [first.id, second.id],
                            "sagas": [first.saga_id, second.saga_id],
                        }
                    )
    return overlaps


def _end(row: Any) -> datetime:
    end: datetime = row.released_at or FOREVER
    return end
