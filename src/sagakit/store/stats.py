"""Metrics from the saga log: counters folded up to a watermark, plus the live tail.

Aggregating the whole log at every scrape takes seconds once it holds a million sagas, so
the sweeper folds what finished into ``sagakit_metrics`` (counts, sums and histogram
buckets per saga type, step and outcome) and moves a watermark forward. A scrape reads
those rows and aggregates only what came after the watermark, an index range of the last
minute or so. The watermark trails the clock by `LAG`: a transaction stamps its rows just
before it commits, so once `LAG` has passed every row stamped before it is visible.
Counters therefore stay complete and monotonic, and pruning old sagas does not lower them.
They count history entries, which never change: a saga's settling is its ``saga_<outcome>``
entry, not its head, which an operator's retry reopens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..core.state import ACTIVE_STATUSES, SETTLED_STATUSES, parse_instance
from ..journal import OUTCOME_LABELS
from . import schema as t
from .recovery import outbox

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
LAG = timedelta(seconds=60)
"""How far the watermark trails the clock."""
FOLD_ROWS = 50_000
"""Most rows of each kind one fold takes in (a backlog is folded over several sweeps)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SETTLED_EVENTS: dict[str, str] = {f"saga_{status}": status for status in SETTLED_STATUSES}
"""The history entries of a saga settling, and the outcome each tells."""


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
        self.total += float(total)


Key = tuple[str, str, str, str]
"""(saga type, step, direction, status); '' where a label does not apply."""


@dataclass
class Tally:
    """Counters and histograms of one kind, by key."""

    counts: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    histograms: dict[Key, Histogram] = field(default_factory=lambda: defaultdict(Histogram))


@dataclass
class Snapshot:
    """Everything /metrics reports, labelled by saga type and step (never by saga id)."""

    started: dict[str, int]
    finished: dict[tuple[str, str], int]
    in_flight: dict[tuple[str, str], int]
    saga_durations: dict[tuple[str, str], Histogram]
    step_durations: dict[tuple[str, str, str], Histogram]
    attempts: dict[Key, int]
    unsent: int = 0
    outstanding: int = 0
    oldest_unsent: float | None = None
    oldest_unclaimed: float | None = None
    watermark: datetime = _EPOCH


def _seconds(db: sa.Engine, start: Any, end: Any) -> Any:
    if db.dialect.name == "postgresql":
        return sa.func.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _bucket_columns(duration: Any) -> list[Any]:
    columns = [sa.func.sum(sa.case((duration <= bound, 1), else_=0)) for bound in BUCKETS]
    return [*columns, sa.func.count(), sa.func.coalesce(sa.func.sum(duration), 0.0)]


def _aggregate(
    conn: sa.Connection, db: sa.Engine, since: datetime, until: datetime | None
) -> dict[str, Tally]:
    """Aggregate the rows stamped in [since, until) (until None: everything after since)."""
    s, h = t.sagas.c, t.transitions.c
    tallies = {"started": Tally(), "finished": Tally(), "attempts": Tally()}

    def window(column: Any) -> list[Any]:
        where = [column >= since]
        if until is not None:
            where.append(column < until)
        return where

    for row in conn.execute(
        sa.select(s.saga_type, sa.func.count()).where(*window(s.created_at)).group_by(s.saga_type)
    ):
        tallies["started"].counts[(row[0], "", "", "")] += int(row[1])
    # A saga's settling is counted from its history entry, which stays: its head forgets
    # it when an operator retries the saga (and counts it again if it settles again).
    joined = t.transitions.join(t.sagas, s.saga_id == h.saga_id)
    saga_seconds = _seconds(db, s.created_at, h.at)
    for row in conn.execute(
        sa.select(s.saga_type, h.event, *_bucket_columns(saga_seconds))
        .select_from(joined)
        .where(h.id > _id_floor(conn, since), h.event.in_(SETTLED_EVENTS), *window(h.at))
        .group_by(s.saga_type, h.event)
    ):
        key = (row[0], "", "", SETTLED_EVENTS[row[1]])
        tallies["finished"].counts[key] += int(row[-2])
        tallies["finished"].histograms[key].add(row[2:-1], row[-1])
    step_seconds = _seconds(db, h.started_at, h.at)
    for row in conn.execute(
        sa.select(s.saga_type, h.step, h.event, *_bucket_columns(step_seconds))
        .select_from(joined)
        .where(h.started_at.is_not(None), *window(h.at))
        .group_by(s.saga_type, h.step, h.event)
    ):
        labels = OUTCOME_LABELS.get(row[2])
        if labels is None or row[1] is None:
            continue
        key = (row[0], parse_instance(row[1])[0], *labels)
        tallies["attempts"].counts[key] += int(row[-2])
        tallies["attempts"].histograms[key].add(row[3:-1], row[-1])
    return tallies


def _id_floor(conn: sa.Connection, since: datetime) -> int:
    """An id below that of every history entry stamped at or after `since`.

    An entry is stamped before it is inserted (which draws its id) and committed within
    `LAG`, so an outcome entry stamped before ``since - LAG`` drew its id before `since`,
    before any entry stamped from `since` on: one probe of the outcomes' index on ``at``
    bounds a scan of the history by its primary key to the last minutes.
    """
    h = t.transitions.c
    found = conn.execute(
        sa.select(h.id)
        .where(h.started_at.is_not(None), h.at < since - LAG)
        .order_by(h.at.desc())
        .limit(1)
    ).scalar()
    return int(found) if found is not None else 0


def _watermark(conn: sa.Connection) -> datetime:
    found = conn.execute(sa.select(t.metrics_state.c.watermark)).scalar()
    return found if found is not None else _EPOCH


def _nth(conn: sa.Connection, column: Any, since: datetime, where: Iterable[Any] = ()) -> Any:
    return conn.execute(
        sa.select(column).where(column >= since, *where).order_by(column).offset(FOLD_ROWS).limit(1)
    ).scalar()


def fold(db: sa.Engine, now: datetime) -> int:
    """Fold rows stamped before `now - LAG` into the metrics table; return how many sagas.

    One folder at a time: the watermark row is locked (SKIP LOCKED: a busy sweeper skips).
    """
    s, h, m = t.sagas.c, t.transitions.c, t.metrics_state.c
    with db.begin() as conn:
        locked = conn.execute(
            sa.select(m.watermark).where(m.id == 1).with_for_update(skip_locked=True)
        ).first()
        if locked is None:
            return 0  # another sweeper is folding
        since = locked[0]
        until = now - LAG
        for limit in (
            _nth(conn, s.created_at, since),
            _nth(conn, s.finished_at, since),
            _nth(conn, h.at, since, [h.started_at.is_not(None)]),
        ):
            if limit is not None and limit < until:
                until = limit
        if until <= since:
            return 0
        tallies = _aggregate(conn, db, since, until)
        for kind, tally in tallies.items():
            for key, count in tally.counts.items():
                hist = tally.histograms.get(key)
                _add(conn, kind, key, count, hist)
        conn.execute(t.metrics_state.update().where(m.id == 1).values(watermark=until))
    return sum(tallies["started"].counts.values())


def _add(conn: sa.Connection, kind: str, key: Key, count: int, hist: Histogram | None) -> None:
    c = t.metrics.c
    where = (c.kind == kind, c.saga_type == key[0], c.step == key[1], c.direction == key[2])
    row = conn.execute(
        sa.select(c.count, c.total, c.buckets).where(*where, c.status == key[3]).with_for_update()
    ).first()
    old_count, old_total, old_buckets = row if row is not None else (0, 0.0, None)
    total = hist.total if hist is not None else 0.0
    buckets = hist.buckets if hist is not None else None
    if row is None:
        conn.execute(
            t.metrics.insert().values(
                kind=kind,
                saga_type=key[0],
                step=key[1],
                direction=key[2],
                status=key[3],
                count=count,
                total=total,
                buckets=buckets,
            )
        )
        return
    merged = buckets if buckets is not None else old_buckets
    if buckets is not None and old_buckets is not None:
        merged = [int(a) + int(b) for a, b in zip(old_buckets, buckets, strict=True)]
    conn.execute(
        t.metrics.update()
        .where(*where, c.status == key[3])
        .values(count=old_count + count, total=old_total + total, buckets=merged)
    )


def snapshot(db: sa.Engine, now: datetime | None = None) -> Snapshot:
    """Read the metrics: folded counters plus the tail after the watermark."""
    now = now or datetime.now(UTC)
    s = t.sagas.c
    with db.connect() as conn:
        if db.dialect.name == "postgresql":
            # One snapshot for every read: a fold that commits meanwhile must be seen by
            # all of them or by none (SQLite's BEGIN IMMEDIATE already serialises them).
            conn.execution_options(isolation_level="REPEATABLE READ")
        watermark = _watermark(conn)
        tallies = _aggregate(conn, db, watermark, None)
        for row in conn.execute(sa.select(t.metrics)):
            tally = tallies.get(row._mapping["kind"])
            if tally is None:
                continue
            values = row._mapping
            key = (values["saga_type"], values["step"], values["direction"], values["status"])
            tally.counts[key] += int(values["count"])
            if values["buckets"] is not None:
                tally.histograms[key].add(values["buckets"], values["total"])
        in_flight = {
            (r[0], r[1]): int(r[2])
            for r in conn.execute(
                sa.select(s.saga_type, s.status, sa.func.count())
                .where(s.status.in_(ACTIVE_STATUSES))
                .group_by(s.saga_type, s.status)
            )
        }
    messages = outbox(db, now)
    started, finished, attempts = tallies["started"], tallies["finished"], tallies["attempts"]
    return Snapshot(
        started={k[0]: v for k, v in started.counts.items()},
        finished={(k[0], k[3]): v for k, v in finished.counts.items()},
        in_flight=in_flight,
        saga_durations={(k[0], k[3]): v for k, v in finished.histograms.items()},
        step_durations=_merge_status(attempts.histograms),
        attempts=dict(attempts.counts),
        unsent=messages.unsent,
        outstanding=messages.outstanding,
        oldest_unsent=messages.oldest_unsent,
        oldest_unclaimed=messages.oldest_unclaimed,
        watermark=watermark,
    )


def _merge_status(histograms: dict[Key, Histogram]) -> dict[tuple[str, str, str], Histogram]:
    merged: dict[tuple[str, str, str], Histogram] = defaultdict(Histogram)
    for (saga_type, step, direction, _), hist in histograms.items():
        merged[(saga_type, step, direction)].add(hist.buckets, hist.total)
    return dict(merged)
