"""SqlSagaStore: the saga log on SQLite (embedded default) or PostgreSQL.

Every transition is one database transaction: the saga row is locked (`SELECT ... FOR UPDATE`
on PostgreSQL; `BEGIN IMMEDIATE` takes the database write lock on SQLite), the new state,
the history entries, the attempt rows and the outbox rows are written, and the transaction
commits. Two workers finishing parallel branches at the same instant are serialised by the
row lock; the second sees the first's result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..core.codec import state_from_dict, state_to_dict
from ..core.errors import SagaNotFound
from ..core.machine import SagaState
from . import schema as t
from .records import AttemptRecord, Claim, OutboxMessage, SagaRecord, TransitionRecord


def make_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """Create an engine with the pragmas and pool settings sagakit relies on."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # No pre-ping: it costs a round trip per transaction; stale connections are recycled.
    return sa.create_engine(url, pool_size=pool_size, max_overflow=10, pool_recycle=1800)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs given without a driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's lazy BEGIN,
    # so a transition takes the write lock before it reads the saga.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqlSagaStore:
    """The saga log. Methods taking `conn` run inside the caller's transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """Open one transaction; commit on success, roll back on error."""
        with self.engine.begin() as conn:
            yield conn

    # --- writes inside a transition --------------------------------------------------

    def insert_saga(
        self,
        conn: sa.Connection,
        state: SagaState,
        *,
        idempotency_key: str | None,
        deadline_at: datetime | None,
        now: datetime,
    ) -> str | None:
        """Insert a new saga; return the existing saga's id if the key was used already."""
        statement = self._insert(t.sagas).values(
            saga_id=state.saga_id,
            saga_type=state.saga_type,
            definition_version=state.version,
            status=state.status.value,
            input=dict(state.input),
            state=state_to_dict(state),
            idempotency_key=idempotency_key,
            version=1,
            created_at=now,
            updated_at=now,
            deadline_at=deadline_at,
        )
        if idempotency_key is None:
            conn.execute(statement)
            return None
        inserted = conn.execute(
            statement.on_conflict_do_nothing(
                index_elements=["saga_type", "idempotency_key"]
            ).returning(t.sagas.c.saga_id)
        ).first()
        if inserted is not None:
            return None
        existing = conn.execute(
            sa.select(t.sagas.c.saga_id).where(
                t.sagas.c.saga_type == state.saga_type,
                t.sagas.c.idempotency_key == idempotency_key,
            )
        ).scalar_one()
        return str(existing)

    def lock(self, conn: sa.Connection, saga_id: str) -> SagaRecord:
        """Lock and return the saga row. Raises SagaNotFound."""
        row = conn.execute(
            sa.select(t.sagas).where(t.sagas.c.saga_id == saga_id).with_for_update()
        ).first()
        if row is None:
            raise SagaNotFound(saga_id)
        return _saga(row)

    def save(self, conn: sa.Connection, state: SagaState, *, now: datetime) -> None:
        """Write the saga's new state (the row is locked by `lock`)."""
        settled = state.status.settled
        conn.execute(
            t.sagas.update()
            .where(t.sagas.c.saga_id == state.saga_id)
            .values(
                status=state.status.value,
                state=state_to_dict(state),
                reason=state.reason,
                failed_step=state.failed_step,
                version=t.sagas.c.version + 1,
                updated_at=now,
                finished_at=now if settled else None,
            )
        )

    def append_history(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Append entries to the transition history."""
        if rows:
            conn.execute(t.transitions.insert(), list(rows))

    def schedule(
        self,
        conn: sa.Connection,
        messages: Sequence[tuple[OutboxMessage, dict[str, Any]]],
        *,
        now: datetime,
    ) -> None:
        """Record attempts and their outbox rows; messages due now are presumed sent."""
        if not messages:
            return
        conn.execute(
            t.step_attempts.insert(),
            [
                {
                    "saga_id": m.saga_id,
                    "task_id": m.task_id,
                    "task_name": m.task_name,
                    "queue": m.queue,
                    "status": "scheduled",
                    "input": m.kwargs,
                    "scheduled_at": now,
                    "not_before": m.not_before,
                    **attempt,
                }
                for m, attempt in messages
            ],
        )
        conn.execute(
            t.outbox.insert(),
            [
                {
                    "saga_id": m.saga_id,
                    "task_id": m.task_id,
                    "task_name": m.task_name,
                    "queue": m.queue,
                    "kwargs": m.kwargs,
                    "time_limit": m.time_limit,
                    "not_before": m.not_before,
                    "sent_at": now if m.not_before <= now else None,
                    "send_count": 1 if m.not_before <= now else 0,
                }
                for m, _ in messages
            ],
        )

    def finish_attempt(
        self,
        conn: sa.Connection,
        task_id: str,
        *,
        status: str,
        now: datetime,
        output: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """Record an attempt's outcome if it is still open; return whether it was."""
        result = conn.execute(
            t.step_attempts.update()
            .where(
                t.step_attempts.c.task_id == task_id,
                t.step_attempts.c.status.in_(("scheduled", "running")),
            )
            .values(status=status, output=output, error=error, traceback=traceback, finished_at=now)
        )
        conn.execute(t.outbox.delete().where(t.outbox.c.task_id == task_id))
        return result.rowcount == 1

    # --- worker side -------------------------------------------------------------------

    def claim(self, task_id: str, *, worker: str, now: datetime, grace: float) -> Claim | None:
        """Mark a scheduled attempt as running; a duplicate delivery is not accepted."""
        with self.begin() as conn:
            row = conn.execute(
                sa.select(t.step_attempts)
                .where(t.step_attempts.c.task_id == task_id)
                .with_for_update()
            ).first()
            if row is None:
                return None
            if row.status != "scheduled":
                return Claim(row.saga_id, row.step, row.direction, row.attempt, False, row.status)
            deadline = None
            if row.timeout is not None:
                deadline = now + timedelta(seconds=row.timeout + grace)
            conn.execute(
                t.step_attempts.update()
                .where(t.step_attempts.c.id == row.id)
                .values(status="running", worker=worker, started_at=now, deadline_at=deadline)
            )
            conn.execute(t.outbox.delete().where(t.outbox.c.task_id == task_id))
            event = "step_started" if row.direction == "action" else "compensation_started"
            conn.execute(
                t.transitions.insert().values(
                    saga_id=row.saga_id,
                    event=event,
                    step=row.step,
                    attempt=row.attempt,
                    detail={"worker": worker, "task_id": task_id},
                    at=now,
                )
            )
            return Claim(row.saga_id, row.step, row.direction, row.attempt, True, "running")

    # --- sweeper side ------------------------------------------------------------------

    def take_due(self, *, now: datetime, redrive_after: float, limit: int) -> list[OutboxMessage]:
        """Return outbox rows to (re)send now and mark them sent."""
        stale = now - timedelta(seconds=redrive_after)
        o = t.outbox.c
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(t.outbox)
                .where(
                    sa.or_(sa.and_(o.sent_at.is_(None), o.not_before <= now), o.sent_at <= stale)
                )
                .order_by(o.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                conn.execute(
                    t.outbox.update()
                    .where(o.id.in_([r.id for r in rows]))
                    .values(sent_at=now, send_count=o.send_count + 1)
                )
        return [_message(r) for r in rows]

    def unsend(self, task_ids: Sequence[str]) -> None:
        """Mark messages that could not be sent, so the sweeper sends them when it can."""
        with self.begin() as conn:
            conn.execute(
                t.outbox.update().where(t.outbox.c.task_id.in_(list(task_ids))).values(sent_at=None)
            )

    def expired_attempts(
        self, *, now: datetime, limit: int, lost_after: float | None = None
    ) -> list[tuple[AttemptRecord, str]]:
        """Running attempts past their deadline, or held by a worker that died; with why.

        A worker has died when it stopped beating for `lost_after` seconds, or when a worker
        of the same name started after the attempt did (it was restarted).
        """
        a, w = t.step_attempts.c, t.workers.c
        lost: sa.ColumnElement[bool] = sa.false()
        if lost_after is not None:
            silent = now - timedelta(seconds=lost_after)
            lost = sa.and_(
                w.name.is_not(None), sa.or_(w.beat_at < silent, w.started_at > a.started_at)
            )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.step_attempts, lost.label("lost"))
                .select_from(t.step_attempts.outerjoin(t.workers, w.name == a.worker))
                .where(a.status == "running", sa.or_(a.deadline_at < now, lost))
                .order_by(a.id)
                .limit(limit)
            ).all()
        return [
            (_attempt(r), f"worker {r.worker} stopped" if r.lost else "timed out") for r in rows
        ]

    def beat(self, name: str, *, pid: int, started_at: datetime, now: datetime) -> None:
        """Record that the worker `name` is alive."""
        statement = self._insert(t.workers).values(
            name=name, pid=pid, started_at=started_at, beat_at=now
        )
        with self.begin() as conn:
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"pid": pid, "started_at": started_at, "beat_at": now},
                )
            )

    def forget(self, name: str) -> None:
        """Remove a worker that shut down cleanly."""
        with self.begin() as conn:
            conn.execute(t.workers.delete().where(t.workers.c.name == name))

    def expired_sagas(self, *, now: datetime, limit: int) -> list[str]:
        """Ids of unfinished sagas whose deadline has passed."""
        s = t.sagas.c
        with self.engine.connect() as conn:
            return [
                str(v)
                for v in conn.execute(
                    sa.select(s.saga_id)
                    .where(s.deadline_at < now, s.status.in_(("pending", "running")))
                    .limit(limit)
                ).scalars()
            ]

    # --- reads -------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRecord:
        """Return one saga. Raises SagaNotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.sagas).where(t.sagas.c.saga_id == saga_id)).first()
        if row is None:
            raise SagaNotFound(saga_id)
        return _saga(row)

    def list_sagas(
        self,
        *,
        status: str | None = None,
        saga_type: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SagaRecord]:
        """Sagas, newest first, filtered."""
        s = t.sagas.c
        query = sa.select(t.sagas).order_by(s.created_at.desc(), s.saga_id.desc())
        if status:
            query = query.where(s.status == status)
        if saga_type:
            query = query.where(s.saga_type == saga_type)
        if created_after:
            query = query.where(s.created_at >= created_after)
        if created_before:
            query = query.where(s.created_at < created_before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [_saga(r) for r in rows]

    def statuses(self, saga_ids: Sequence[str]) -> dict[str, str]:
        """The status of each of `saga_ids` that exists, in one query."""
        s = t.sagas.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.saga_id, s.status).where(s.saga_id.in_(list(saga_ids)))
            ).all()
        return {str(r[0]): str(r[1]) for r in rows}

    def count_by_status(self) -> dict[tuple[str, str], int]:
        """Number of sagas per (type, status)."""
        s = t.sagas.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.saga_type, s.status, sa.func.count()).group_by(s.saga_type, s.status)
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def attempts(self, saga_id: str) -> list[AttemptRecord]:
        """Every attempt of a saga, in the order they were scheduled."""
        a = t.step_attempts.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.step_attempts).where(a.saga_id == saga_id).order_by(a.id)
            ).all()
        return [_attempt(r) for r in rows]

    def history(self, saga_id: str, *, after: int = 0) -> list[TransitionRecord]:
        """The saga's transition history, oldest first."""
        h = t.transitions.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.transitions).where(h.saga_id == saga_id, h.id > after).order_by(h.id)
            ).all()
        return [
            TransitionRecord(
                r.id,
                r.saga_id,
                r.event,
                r.from_status,
                r.to_status,
                r.step,
                r.attempt,
                r.detail,
                r.at,
            )
            for r in rows
        ]

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))


def _saga(row: sa.Row[Any]) -> SagaRecord:
    return SagaRecord(
        saga_id=row.saga_id,
        saga_type=row.saga_type,
        definition_version=row.definition_version,
        status=row.status,
        input=row.input,
        state=state_from_dict(row.state),
        reason=row.reason,
        failed_step=row.failed_step,
        idempotency_key=row.idempotency_key,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        deadline_at=row.deadline_at,
    )


def _attempt(row: sa.Row[Any]) -> AttemptRecord:
    return AttemptRecord(
        saga_id=row.saga_id,
        step=row.step,
        direction=row.direction,
        attempt=row.attempt,
        task_id=row.task_id,
        task_name=row.task_name,
        queue=row.queue,
        status=row.status,
        worker=row.worker,
        input=row.input,
        output=row.output,
        error=row.error,
        traceback=row.traceback,
        timeout=row.timeout,
        scheduled_at=row.scheduled_at,
        not_before=row.not_before,
        started_at=row.started_at,
        deadline_at=row.deadline_at,
        finished_at=row.finished_at,
    )


def _message(row: sa.Row[Any]) -> OutboxMessage:
    return OutboxMessage(
        row.saga_id,
        row.task_id,
        row.task_name,
        row.queue,
        row.kwargs,
        row.time_limit,
        row.not_before,
    )
