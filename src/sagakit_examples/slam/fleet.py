"""The robot service: reserve robots for a mission, give them back, grow and shrink the fleet.

A robot held by a saga carries that saga's id in ``slam_robots.held_by`` and has one open row
in ``slam_allocations``; a partial unique index allows at most one open row per robot, so the
database itself refuses a double booking. An operator adds robots and retires them; a robot
retired while a mission holds it is ``retiring`` until that mission releases it, and is never
handed out again. Functions taking `conn` run inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sagakit import NonRetryableError, RetryableError

from .databases import advisory_lock, robot_name
from .settings import MAX_FLEET
from .tables import allocations, robots, utcnow, waits

FOREVER = datetime.max.replace(tzinfo=UTC)
MAX_ADD = 100
"""Robots one ``sagakit robots add`` may add."""


class RobotsBusy(RetryableError):
    """Enough robots are free, but concurrent transactions have some locked: try again."""


class NotEnoughRobots(Exception):
    """Fewer robots are free than a mission asked for (nothing was changed)."""

    def __init__(self, requested: int, free: int, fleet: int) -> None:
        super().__init__(f"not enough robots: {requested} requested, {free} of {fleet} free")
        self.requested = requested
        self.free = free
        self.fleet = fleet


class UnknownRobots(ValueError):
    """Robot names that are not in the fleet."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"no robot named {', '.join(map(repr, names))} in the fleet")
        self.names = names


def shortage(short: NotEnoughRobots, waited: float, limit: float) -> Exception:
    """The error a mission short of robots fails with, `waited` seconds into its wait.

    Within the mission's `limit` (its ``robot_wait``) it is a `RetryableError`: the step is
    tried again later. After it, or with no wait at all, a `NonRetryableError` with the reason.
    """
    if short.requested > short.fleet:  # no release will ever free enough
        return NonRetryableError(
            f"{short}: the fleet has only {short.fleet} robots in service "
            "(`sagakit robots add` adds more)"
        )
    if waited < limit:
        return RetryableError(f"{short}; waiting for robots ({waited:.0f} s of {limit:g} s)")
    if limit > 0:
        return NonRetryableError(f"{short}, after waiting {waited:.0f} s (robot_wait {limit:g} s)")
    return NonRetryableError(str(short))


@dataclass(frozen=True)
class Released:
    """What a release did: the robots given back, and those of them retired on the way."""

    robots: list[int] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


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
        NotEnoughRobots: If fewer than `count` robots are free.
        RobotsBusy: If enough are free but some are locked by concurrent transactions
            (PostgreSQL only).
    """
    # Lock the candidates first, then update exactly those: inside ``UPDATE ... WHERE id IN
    # (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL may run the subquery once per
    # row it scans, and so update more than n robots.
    candidates = (
        conn.execute(
            sa.select(robots.c.id)
            .where(robots.c.held_by.is_(None), robots.c.state == "active")
            .order_by(robots.c.id)
            .limit(count)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    taken = conn.execute(
        sa.update(robots)
        .where(robots.c.id.in_(candidates), robots.c.held_by.is_(None))
        .values(held_by=saga_id)
        .returning(robots.c.id, robots.c.name)
    ).all()
    if len(taken) < count:
        # The caller's transaction rolls back on the way out, and the partial update with it.
        free, active = _counts(conn)
        free += len(taken)  # this transaction's own update hides them from the count
        if free >= count:  # enough robots, but other transactions hold some of their rows
            raise RobotsBusy(f"robots are busy: {count} requested, {len(taken)} unlocked")
        raise NotEnoughRobots(count, free, active)
    reserved = sorted(({"id": r.id, "name": r.name} for r in taken), key=lambda r: r["id"])
    # Read the clock only now that the rows are ours: a release committed before it.
    now = now or utcnow()
    conn.execute(
        allocations.insert(),
        [
            {"robot_id": robot["id"], "saga_id": saga_id, "allocated_at": now, "released_at": None}
            for robot in reserved
        ],
    )
    return reserved


def _counts(conn: sa.Connection) -> tuple[int, int]:
    """(free, active): robots in service that no one holds, and all robots in service."""
    row = conn.execute(
        sa.select(
            sa.func.count().filter(robots.c.held_by.is_(None)),
            sa.func.count(),
        ).where(robots.c.state == "active")
    ).one()
    return int(row[0]), int(row[1])


def release(conn: sa.Connection, saga_id: str, now: datetime | None = None) -> Released:
    """Give back exactly the robots `saga_id` holds; a no-op when it holds none.

    A robot an operator retired while the mission held it is retired now.
    """
    now = now or utcnow()
    held = conn.execute(
        sa.update(robots)
        .where(robots.c.held_by == saga_id)
        .values(
            held_by=None,
            state=sa.case((robots.c.state == "retiring", "retired"), else_=robots.c.state),
            retired_at=sa.case((robots.c.state == "retiring", now), else_=robots.c.retired_at),
        )
        .returning(robots.c.id, robots.c.name, robots.c.state)
    ).all()
    conn.execute(
        sa.update(allocations)
        .where(allocations.c.saga_id == saga_id, allocations.c.released_at.is_(None))
        .values(released_at=now)
    )
    return Released(
        robots=sorted(row.id for row in held),
        retired=sorted(row.name for row in held if row.state == "retired"),
    )


def wait_started(
    conn: sa.Connection, saga_id: str, count: int, now: datetime | None = None
) -> datetime:
    """When `saga_id` first asked for robots: recorded by the first call, read by the rest."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(waits)
    conn.execute(
        insert.values(
            saga_id=saga_id, robots=count, started_at=now or utcnow()
        ).on_conflict_do_nothing(index_elements=[waits.c.saga_id])
    )
    started: datetime = conn.execute(
        sa.select(waits.c.started_at).where(waits.c.saga_id == saga_id)
    ).scalar_one()
    return started


def add(conn: sa.Connection, count: int, now: datetime | None = None) -> list[str]:
    """Add `count` robots to the fleet, numbered after every robot it ever had.

    Raises:
        ValueError: If `count` is not between 1 and 100, or the fleet would outgrow 999 ids.
    """
    if not 1 <= count <= MAX_ADD:
        raise ValueError(f"count must be between 1 and {MAX_ADD}, got {count}")
    advisory_lock(conn)
    last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(robots.c.id), 0))).scalar_one()
    if last + count > MAX_FLEET:
        raise ValueError(
            f"the fleet can number at most {MAX_FLEET} robots over its life "
            f"({last} so far, retired ones included); cannot add {count}"
        )
    now = now or utcnow()
    numbers = range(last + 1, last + count + 1)
    conn.execute(
        robots.insert(),
        [
            {"id": n, "name": robot_name(n), "held_by": None, "state": "active", "added_at": now}
            for n in numbers
        ],
    )
    return [robot_name(n) for n in numbers]


def retire(
    conn: sa.Connection, names: Iterable[str], now: datetime | None = None
) -> dict[str, str]:
    """Take robots out of service: at once if free, else when their mission releases them.

    Returns:
        For each name: ``retired``, ``retiring (held by <saga>)`` or ``already retired``.

    Raises:
        UnknownRobots: If a name is not in the fleet (and nothing is changed).
    """
    wanted = list(dict.fromkeys(names))
    advisory_lock(conn)
    rows = {
        row.name: row
        for row in conn.execute(
            sa.select(robots.c.name, robots.c.state, robots.c.held_by)
            .where(robots.c.name.in_(wanted))
            .with_for_update()
        )
    }
    unknown = [name for name in wanted if name not in rows]
    if unknown:
        raise UnknownRobots(unknown)
    now = now or utcnow()
    outcome: dict[str, str] = {}
    for name in wanted:
        row = rows[name]
        if row.state == "retired":
            outcome[name] = "already retired"
        elif row.held_by is None:
            conn.execute(
                robots.update().where(robots.c.name == name).values(state="retired", retired_at=now)
            )
            outcome[name] = "retired"
        else:
            conn.execute(robots.update().where(robots.c.name == name).values(state="retiring"))
            outcome[name] = f"retiring (held by {row.held_by}; retired when it is released)"
    return outcome


def held_by(engine: sa.Engine, saga_id: str) -> list[int]:
    """Ids of the robots `saga_id` holds now."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(robots.c.id).where(robots.c.held_by == saga_id).order_by(robots.c.id)
        ).scalars()
        return list(rows)


def list_fleet(engine: sa.Engine, *, include_retired: bool = False) -> list[dict[str, Any]]:
    """Robots as ``{"id", "name", "state", "held_by"}``, ordered by id.

    ``state`` is ``free``, ``in_use``, ``retiring`` or ``retired``; retired robots are left
    out unless `include_retired`.
    """
    query = sa.select(robots).order_by(robots.c.id)
    if not include_retired:
        query = query.where(robots.c.state != "retired")
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {"id": row.id, "name": row.name, "state": _state(row), "held_by": row.held_by}
        for row in rows
    ]


def _state(row: Any) -> str:
    if row.state != "active":
        return str(row.state)
    return "free" if row.held_by is None else "in_use"


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
