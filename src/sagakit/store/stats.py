"""Aggregates over the saga log for metrics: every process sees the same, complete numbers."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from . import schema as t

BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
_INSTANCE = re.compile(r"\[\d+\]$")


@dataclass
class Histogram:
    """Cumulative bucket counts (one per bound in BUCKETS, then +Inf), sum and count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    @property
    def count(self) -> int:
        """Number of observations."""
        return self.buckets[-1]

    def add(self, counts: Sequence[int], total: float) -> None:
        """Merge another histogram's cumulative counts."""
        self.buckets = [a + int(b) for a, b in zip(self.buckets, counts, strict=True)]
        self.total += total


@dataclass
class Snapshot:
    """Everything /metrics reports, labelled by saga type and step (never by saga id)."""

    by_status: dict[tuple[str, str], int]
    saga_durations: dict[tuple[str, str], Histogram]
    step_durations: dict[tuple[str, str, str], Histogram]
    attempts: dict[tuple[str, str, str, str], int]


def _seconds(engine: sa.Engine, start: Any, end: Any) -> Any:
    if engine.dialect.name == "postgresql":
        return sa.func.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _bucket_columns(duration: Any) -> list[Any]:
    columns = [sa.func.sum(sa.case((duration <= bound, 1), else_=0)) for bound in BUCKETS]
    return [*columns, sa.func.count(), sa.func.coalesce(sa.func.sum(duration), 0.0)]


def step_name(instance: str) -> str:
    """``explore[3]`` -> ``explore``: labels stay bounded however wide a fan-out is."""
    return _INSTANCE.sub("", instance)


def snapshot(engine: sa.Engine) -> Snapshot:
    """Read the aggregates in one short read-only pass."""
    s, a = t.sagas.c, t.step_attempts.c
    saga_seconds = _seconds(engine, s.created_at, s.finished_at)
    step_seconds = _seconds(engine, a.started_at, a.finished_at)
    with engine.connect() as conn:
        by_status = {
            (row[0], row[1]): int(row[2])
            for row in conn.execute(
                sa.select(s.saga_type, s.status, sa.func.count()).group_by(s.saga_type, s.status)
            )
        }
        saga_rows = conn.execute(
            sa.select(s.saga_type, s.status, *_bucket_columns(saga_seconds))
            .where(s.finished_at.is_not(None))
            .group_by(s.saga_type, s.status)
        ).all()
        joined = t.step_attempts.join(t.sagas, t.sagas.c.saga_id == a.saga_id)
        step_rows = conn.execute(
            sa.select(s.saga_type, a.step, a.direction, *_bucket_columns(step_seconds))
            .select_from(joined)
            .where(a.started_at.is_not(None), a.finished_at.is_not(None))
            .group_by(s.saga_type, a.step, a.direction)
        ).all()
        attempt_rows = conn.execute(
            sa.select(s.saga_type, a.step, a.direction, a.status, sa.func.count())
            .select_from(joined)
            .group_by(s.saga_type, a.step, a.direction, a.status)
        ).all()
    saga_durations: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
    for row in saga_rows:
        saga_durations[(row[0], row[1])].add(row[2:-1], float(row[-1]))
    step_durations: dict[tuple[str, str, str], Histogram] = defaultdict(Histogram)
    for row in step_rows:
        step_durations[(row[0], step_name(row[1]), row[2])].add(row[3:-1], float(row[-1]))
    attempts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for row in attempt_rows:
        attempts[(row[0], step_name(row[1]), row[2], row[3])] += int(row[4])
    return Snapshot(by_status, dict(saga_durations), dict(step_durations), dict(attempts))
