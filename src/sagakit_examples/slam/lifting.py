"""Injected faults an operator can lift.

A mission's faults live in its input, which the saga log keeps as it was given: an operator
could never clear a permanent one (``compensation_fail: {"explore": 99}`` leaves the saga
``failed`` for good, and ``sagakit retry`` only runs the failing compensation again). So
each service also keeps, in its own database, the faults lifted for a saga: ``sagakit
faults lift ID [--step STEP] --reason ...`` writes a row to the database of each service
concerned, the step's local transaction reads it before it injects anything, and the next
``sagakit retry ID`` (or a step still to run) goes through. Like a fix deployed to the
remote system, a lift is the operator's act, recorded with who and why.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .faults import STEPS, branch_of
from .settings import Service
from .tables import LIFTED_FAULTS, utcnow

OWNER: dict[str, Service] = {
    "allocate_robots": Service.ROBOTS,
    "release_robots": Service.ROBOTS,
    "plan_routes": Service.PLANNING,
    "explore": Service.EXPLORATION,
    "integrate_maps": Service.MAPPING,
}
"""The service whose local transaction runs each step (and its compensation)."""
ALL = "*"


def step_name(step: str) -> str:
    """The step of a step instance (``explore[2]`` -> ``explore``), checked."""
    base = step.split("[", 1)[0]
    if base not in STEPS or (base != step and branch_of(step) is None):
        raise ValueError(f"unknown step {step!r}; valid steps: {', '.join(STEPS)}, explore[<n>]")
    return base


def services_for(step: str | None) -> list[Service]:
    """The services a lift of `step` (None: every step) is written to."""
    if step is None:
        return list(Service)
    return [OWNER[step_name(step)]]


def lift(
    conn: sa.Connection, service: Service, saga_id: str, step: str | None, *, by: str, reason: str
) -> None:
    """Record in `service`'s database that `saga_id`'s faults at `step` (None: all) are lifted."""
    table = LIFTED_FAULTS[service]
    key = ALL if step is None else step
    conn.execute(table.delete().where(table.c.saga_id == saga_id, table.c.step == key))
    conn.execute(
        table.insert().values(
            saga_id=saga_id, step=key, lifted_by=by, reason=reason, lifted_at=utcnow()
        )
    )


def lifted(conn: sa.Connection, service: Service, saga_id: str, step: str) -> bool:
    """Whether an operator lifted the faults of this step instance (inside the step's
    transaction: the same read as its writes)."""
    table = LIFTED_FAULTS[service]
    names = {step, step.split("[", 1)[0], ALL}
    query = sa.select(sa.literal(1)).where(table.c.saga_id == saga_id, table.c.step.in_(names))
    return conn.execute(query.limit(1)).first() is not None


def listed(conn: sa.Connection, service: Service, saga_id: str) -> list[dict[str, Any]]:
    """The lifts recorded for `saga_id` in `service`'s database; each names the service
    whose step it lifts (``*``: every service)."""
    table = LIFTED_FAULTS[service]
    rows = conn.execute(sa.select(table).where(table.c.saga_id == saga_id).order_by(table.c.step))
    return [
        {
            "service": ALL if row.step == ALL else OWNER[step_name(row.step)].value,
            "step": row.step,
            "lifted_by": row.lifted_by,
            "reason": row.reason,
            "lifted_at": row.lifted_at.isoformat(),
        }
        for row in rows
        if row.step == ALL or service is OWNER[step_name(row.step)]
    ]
