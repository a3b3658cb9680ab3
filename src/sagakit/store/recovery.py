"""The sweeper's queries: heartbeats, messages to (re)send, deadlines.

Each query is bounded (a LIMIT, a partial index) so a sweep costs the same with ten sagas
in flight or ten thousand, and safe when several sweepers run at once: rows are taken with
``FOR UPDATE SKIP LOCKED`` or deleted with ``RETURNING``, so each is handled once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..core.state import BUSY_STATUSES
from . import schema as t


@dataclass(frozen=True, slots=True)
class Held:
    """A task a worker runs (`started` is set) or holds, waiting to run it."""

    task_id: str
    started: float | None = None
    """Epoch seconds at which it began to run."""
    soft_limit: float | None = None
    """Seconds it may run (the step's timeout)."""


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat of one worker process."""

    name: str
    pid: int
    started_at: datetime
    held: tuple[Held, ...] = ()
    definitions: tuple[tuple[str, int], ...] = ()
    """The (saga type, version) pairs the worker can advance."""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A stored heartbeat."""

    name: str
    pid: int
    started_at: datetime
    beat_at: datetime
    held: tuple[Held, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Pending:
    """A step row whose message is to be sent."""

    saga_id: str
    saga_type: str
    name: str
    status: str
    attempt: int
    comp_attempt: int
    item: Any
    task_id: str
    task_name: str
    queue: str
    not_before: datetime
    definition_version: int = 1
    """The version of its saga's definition (the one that builds the message)."""
    carrier: str | None = None
    """The delivery running the attempt where it is, if any (an eager saga's next step)."""

    def held_in(self, held: Collection[str]) -> bool:
        """Whether a live worker holds this attempt: its own message, or the delivery
        that runs it (`carrier`)."""
        return self.task_id in held or (self.carrier is not None and self.carrier in held)


def _encode(held: Iterable[Held]) -> list[list[Any]]:
    return [[h.task_id, h.started, h.soft_limit] for h in held]


def _decode(raw: Any) -> tuple[Held, ...]:
    return tuple(Held(str(r[0]), r[1], r[2]) for r in raw or ())


def _insert(db: sa.Engine) -> Any:
    return postgresql.insert if db.dialect.name == "postgresql" else sqlite.insert


def beat(db: sa.Engine, heartbeat: Beat, now: datetime) -> WorkerRow | None:
    """Record a heartbeat; return the previous incarnation's row if this name restarted."""
    w = t.workers.c
    values = {
        "pid": heartbeat.pid,
        "started_at": heartbeat.started_at,
        "beat_at": now,
        "running": _encode(h for h in heartbeat.held if h.started is not None),
        "reserved": _encode(h for h in heartbeat.held if h.started is None),
        "definitions": [list(d) for d in sorted(heartbeat.definitions)],
    }
    with db.begin() as conn:
        old = conn.execute(
            sa.select(t.workers).where(w.name == heartbeat.name).with_for_update()
        ).first()
        statement = _insert(db)(t.workers).values(name=heartbeat.name, **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))
    if old is None or (old.pid, old.started_at) == (heartbeat.pid, heartbeat.started_at):
        return None
    return _worker(old)


def forget(db: sa.Engine, name: str) -> None:
    """Remove a worker that shut down cleanly."""
    with db.begin() as conn:
        conn.execute(t.workers.delete().where(t.workers.c.name == name))


def take_silent(db: sa.Engine, silent_since: datetime) -> list[WorkerRow]:
    """Remove and return the workers that have not beaten since `silent_since`."""
    with db.begin() as conn:
        rows = conn.execute(
            t.workers.delete().where(t.workers.c.beat_at < silent_since).returning(t.workers)
        ).all()
    return [_worker(r) for r in rows]


def workers(db: sa.Engine) -> list[WorkerRow]:
    """Every stored heartbeat."""
    with db.connect() as conn:
        return [_worker(r) for r in conn.execute(sa.select(t.workers)).all()]


def _worker(row: Any) -> WorkerRow:
    held = (*_decode(row.running), *(Held(h.task_id) for h in _decode(row.reserved)))
    return WorkerRow(row.name, row.pid, row.started_at, row.beat_at, held)


def _pending(rows: Sequence[Any]) -> list[Pending]:
    return [
        Pending(
            r.saga_id,
            r.saga_type,
            r.name,
            r.status,
            r.attempt,
            r.comp_attempt,
            r.item,
            r.task_id,
            r.task_name,
            r.queue,
            r.not_before,
            getattr(r, "definition_version", 1),
            getattr(r, "carrier", None),
        )
        for r in rows
    ]


def _pending_select() -> Any:
    s, st = t.sagas.c, t.steps.c
    return (
        sa.select(
            st.saga_id,
            s.saga_type,
            st.name,
            st.status,
            st.attempt,
            st.comp_attempt,
            st.item,
            st.task_id,
            st.task_name,
            st.queue,
            st.not_before,
            s.definition_version,
            st.carrier,
        )
        .select_from(t.steps.join(t.sagas, s.saga_id == st.saga_id))
        .where(
            # A choreographed saga's steps are events its tracker folds: nothing to send.
            s.choreographed.is_(False)
        )
    )


def take_due(
    db: sa.Engine, now: datetime, definitions: Collection[tuple[str, int]], limit: int
) -> list[Pending]:
    """Mark sent and return the unsent messages that are due, of sagas that run one of the
    given definitions (saga type, version): those of other versions wait for theirs."""
    st = t.steps.c
    with db.begin() as conn:
        rows = conn.execute(
            _pending_select()
            .where(
                st.sent_at.is_(None),
                st.status.in_(BUSY_STATUSES),
                st.not_before <= now,
                sa.tuple_(t.sagas.c.saga_type, t.sagas.c.definition_version).in_(list(definitions)),
            )
            .order_by(st.not_before)
            .limit(limit)
            .with_for_update(of=t.steps, skip_locked=True)
        ).all()
        if rows:  # one statement for the batch, whatever its size
            keys = [(r.saga_id, r.name, r.task_id) for r in rows]
            conn.execute(
                t.steps.update()
                .where(sa.tuple_(st.saga_id, st.name, st.task_id).in_(keys))
                .values(sent_at=now, send_count=st.send_count + 1, carrier=None)
            )
    return _pending(rows)


@dataclass
class Redrive:
    """A pass over the messages sent before `before`, a batch at a time (`sent_before`)."""

    before: datetime
    after: tuple[datetime, str, str] | None = None
    """Where the last batch ended: (sent_at, saga_id, name)."""


def sent_before(db: sa.Engine, redrive: Redrive, limit: int) -> list[Pending]:
    """The next batch of outstanding messages sent before `redrive.before`, oldest first;
    moves `redrive` past them."""
    st = t.steps.c
    query = (
        _pending_select()
        .add_columns(st.sent_at)
        .where(st.status.in_(BUSY_STATUSES), st.sent_at < redrive.before)
        .order_by(st.sent_at, st.saga_id, st.name)
        .limit(limit)
    )
    if redrive.after is not None:
        query = query.where(sa.tuple_(st.sent_at, st.saga_id, st.name) > redrive.after)
    with db.connect() as conn:
        rows = conn.execute(query).all()
    if rows:
        last = rows[-1]
        redrive.after = (last.sent_at, last.saga_id, last.name)
    return _pending(rows)


def stale_sends(db: sa.Engine, now: datetime, redrive_after: float, limit: int) -> list[Pending]:
    """Outstanding messages unclaimed for long, backing off per row: the n-th re-send waits
    `redrive_after` * 2**(n-1) seconds."""
    st = t.steps.c
    with db.connect() as conn:
        rows = conn.execute(
            _pending_select()
            .add_columns(st.sent_at, st.send_count)
            .where(
                st.status.in_(BUSY_STATUSES),
                st.sent_at < now - timedelta(seconds=redrive_after),
            )
            .order_by(st.sent_at)
            .limit(limit)
        ).all()
    return [
        p
        for p, r in zip(_pending(rows), rows, strict=True)
        if r.sent_at <= now - timedelta(seconds=redrive_after * 2 ** min(r.send_count - 1, 12))
    ]


def unsend(db: sa.Engine, messages: Iterable[Pending]) -> int:
    """Mark messages unsent (the next sweep sends them) unless their attempt moved on."""
    st = t.steps.c
    count = 0
    with db.begin() as conn:
        for p in messages:
            result = conn.execute(
                t.steps.update()
                .where(
                    st.saga_id == p.saga_id,
                    st.name == p.name,
                    st.task_id == p.task_id,
                    st.status.in_(BUSY_STATUSES),
                )
                .values(sent_at=None, carrier=None)
            )
            count += result.rowcount
    return count


@dataclass(frozen=True, slots=True)
class Carried:
    """An attempt in flight that a delivery runs where it is (an eager saga's step)."""

    held: Held
    """The attempt, running since its row was written (when its carrier took it)."""
    saga_type: str
    definition_version: int
    name: str
    carrier: str


def carried_by(db: sa.Engine, carriers: Collection[str]) -> list[Carried]:
    """The attempts in flight that the deliveries `carriers` run where they are."""
    if not carriers:
        return []
    st, s = t.steps.c, t.sagas.c
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(
                st.task_id, st.sent_at, st.name, st.carrier, s.saga_type, s.definition_version
            )
            .select_from(t.steps.join(t.sagas, s.saga_id == st.saga_id))
            .where(
                st.carrier.is_not(None),
                st.carrier.in_(sorted(carriers)),
                st.status.in_(BUSY_STATUSES),
            )
        ).all()
    return [
        Carried(
            Held(r.task_id, r.sent_at.timestamp() if r.sent_at else None),
            r.saga_type,
            r.definition_version,
            r.name,
            r.carrier,
        )
        for r in rows
    ]


def release_carried(db: sa.Engine, carrier: str) -> int:
    """Mark unsent (the next sweep sends them) the attempts in flight that the delivery
    `carrier` ran where it was: it was lost running them."""
    st = t.steps.c
    with db.begin() as conn:
        result = conn.execute(
            t.steps.update()
            .where(st.carrier.is_not(None), st.carrier == carrier, st.status.in_(BUSY_STATUSES))
            .values(sent_at=None, carrier=None)
        )
    return int(result.rowcount)


def overdue_sagas(db: sa.Engine, now: datetime, limit: int) -> list[str]:
    """Ids of sagas past their deadline that have not passed their pivot or settled."""
    s = t.sagas.c
    with db.connect() as conn:
        return [
            str(v)
            for v in conn.execute(
                sa.select(s.saga_id)
                .where(
                    s.deadline_at.is_not(None),
                    s.deadline_at < now,
                    s.status.in_(("pending", "running")),
                    s.choreographed.is_(False),  # its tracker owns its timeouts
                )
                .limit(limit)
            ).scalars()
        ]


@dataclass(frozen=True, slots=True)
class Outbox:
    """Where the step messages stand: the first thing to check when sagas stall."""

    unsent: int
    """Due messages not sent yet (a broker that refused them, no sweeper running)."""
    outstanding: int
    """Step instances with a message outstanding, sent or not, not yet answered."""
    oldest_unsent: float | None
    """Age in seconds of the oldest due message not sent yet."""
    oldest_unclaimed: float | None
    """Age in seconds of the oldest message sent that no worker's heartbeat holds (running
    or reserved): waiting in its queue for a worker that is busy, missing or stuck."""


def outbox(db: sa.Engine, now: datetime) -> Outbox:
    """The outbox's depth and the ages of its oldest unsent and unclaimed messages.

    Each read stays on the steps' partial indexes, which hold only the messages in flight:
    the unclaimed one walks the busy index from its oldest entry, past at most the messages
    the workers hold (a few per worker process).
    """
    st, w = t.steps.c, t.workers.c
    with db.connect() as conn:
        unsent, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(st.not_before)).where(
                st.sent_at.is_(None), st.status.in_(BUSY_STATUSES), st.not_before <= now
            )
        ).one()
        busy = conn.execute(
            sa.select(sa.func.count()).where(st.status.in_(BUSY_STATUSES))
        ).scalar_one()
        held = {
            h.task_id
            for row in conn.execute(sa.select(w.running, w.reserved))
            for h in (*_decode(row.running), *_decode(row.reserved))
        }
        unclaimed = (
            sa.select(st.sent_at)
            .select_from(t.steps.join(t.sagas, t.sagas.c.saga_id == st.saga_id))
            .where(st.status.in_(BUSY_STATUSES), st.sent_at.is_not(None))
            .where(t.sagas.c.choreographed.is_(False))  # no worker ever holds those
        )
        if held:
            unclaimed = unclaimed.where(
                st.task_id.not_in(held), sa.or_(st.carrier.is_(None), st.carrier.not_in(held))
            )
        sent = conn.execute(unclaimed.order_by(st.sent_at).limit(1)).scalar()
    return Outbox(int(unsent), int(busy), _age(now, oldest), _age(now, sent))


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())
