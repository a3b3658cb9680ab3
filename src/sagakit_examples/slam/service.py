"""Plumbing shared by the mission's step tasks: one exactly-once transaction per step.

Every action and compensation is one local transaction in its service's own database, made
exactly-once by `sagakit.idempotency.once` on the saga's step key. Injected faults (see
`faults`) fire inside that transaction, after the work and before the commit, so a failed
attempt leaves nothing behind. A compensation also *fences* its action: it records the
action's key, so an action attempt that timed out and arrives late does nothing.

A service never reads another service's tables: what a step needs from an earlier one it
reads from that step's output, by name (`output_of`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagakit import NonRetryableError, StepContext
from sagakit.choreography import after_commit as after_commit  # for the step tasks
from sagakit.choreography import joined
from sagakit.idempotency import once

from . import databases
from .lifting import lifted
from .saga import MissionInput
from .settings import Service
from .tables import maps
from .world import World, generate_world

FENCED = {"fenced": True}
"""Result recorded under an action's key by a compensation that ran before the action."""


def mission_of(ctx: StepContext) -> MissionInput:
    """The mission's parameters (the saga input, validated when the saga started)."""
    return MissionInput.model_validate(dict(ctx.input))


def output_of(ctx: StepContext, step: str) -> Mapping[str, Any]:
    """The output of the saga's step instance `step` (e.g. ``explore[0]``).

    Raises:
        NonRetryableError: If the saga has no output of that step.
    """
    try:
        output = ctx.results[step]
    except KeyError:
        raise NonRetryableError(f"{ctx.step} needs the output of {step}, which has none") from None
    if not isinstance(output, Mapping):
        raise NonRetryableError(f"{ctx.step}: the output of {step} is not an object")
    return output


def world_of(mission: MissionInput) -> World:
    """The mission's ground-truth world (deterministic, so every service rebuilds it)."""
    return generate_world(mission.area, mission.seed, mission.width, mission.height)


def engine(service: Service) -> sa.Engine:
    """The engine of `service`'s database in this process."""
    return databases.current().engine(service)


def commit(ctx: StepContext, service: Service, work: Callable[[sa.Connection], Any]) -> Any:
    """Run `work(conn)` once per step key in one transaction of `service`'s database.

    Faults are injected before the commit, unless an operator lifted them (`lifting`).

    Returns:
        What `work` returned, the first time; the same result on every repeat.
    """
    mission = mission_of(ctx)
    mission.faults.delay(ctx.step)
    with _transaction(service) as conn:
        if ctx.direction == "compensation":
            once(conn, f"{ctx.saga_id}:{ctx.step}:action", lambda: FENCED)
        result = once(conn, ctx.key, lambda: work(conn))
        if not lifted(conn, service, ctx.saga_id, ctx.step):
            mission.faults.check(ctx, branches=mission.robots, seed=mission.seed)
    return result


@contextmanager
def _transaction(service: Service) -> Iterator[sa.Connection]:
    """A transaction of `service`'s database: a savepoint of the choreography handler's
    own transaction when one is running (its inbox and outbox commit with the work)."""
    handler = joined()
    if handler is None:
        with engine(service).begin() as conn:
            yield conn
        return
    with handler.begin_nested():
        yield handler


def map_path(saga_id: str) -> Path:
    """Where the map of `saga_id` is written (``SLAM_OUTPUT_DIR``, default ``out/maps``)."""
    return databases.current().settings.map_path(saga_id)


def write_map(saga_id: str, target: Path) -> bool:
    """Write the stored map of `saga_id` to `target` atomically; False if none is stored."""
    with engine(Service.MAPPING).connect() as conn:
        png = conn.execute(sa.select(maps.c.png).where(maps.c.saga_id == saga_id)).scalar()
    if png is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(png)
    partial.replace(target)
    return True
