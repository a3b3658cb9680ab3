"""The saga log's read side: sagas, their step rows and history, newest first, by cursor.

Lists page by keyset (``created_at, saga_id`` below the cursor), so the millionth saga is
as quick to reach as the first; each filter has an index that serves it in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..core.codec import head_from, step_from
from ..core.errors import SagaNotFound
from ..core.state import SagaState, StepState
from . import schema as t


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """One saga as stored: its head plus bookkeeping (`input` is None in listings)."""

    state: SagaState
    input: dict[str, Any] | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None

    @property
    def saga_id(self) -> str:
        return self.state.saga_id

    @property
    def saga_type(self) -> str:
        return self.state.saga_type

    @property
    def status(self) -> str:
        return self.state.status.value

    @property
    def reason(self) -> str | None:
        return self.state.reason

    @property
    def failed_step(self) -> str | None:
        return self.state.failed_step


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step instance as stored: its state, output and current message."""

    state: StepState
    output: Any
    task_id: str
    task_name: str
    queue: str
    not_before: datetime
    sent_at: datetime | None
    send_count: int


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One entry of the append-only history."""

    id: int
    saga_id: str
    event: str
    from_status: str | None
    to_status: str | None
    step: str | None
    attempt: int | None
    detail: dict[str, Any] | None
    at: datetime
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of a newest-first listing ends."""

    created_at: datetime
    saga_id: str


_LISTED = [c for c in t.sagas.c if c.name != "input"]


def _record(row: Any, with_input: bool) -> SagaRecord:
    values = row._mapping
    return SagaRecord(
        state=head_from(values),
        input=values["input"] if with_input else None,
        idempotency_key=values["idempotency_key"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        finished_at=values["finished_at"],
        deadline_at=values["deadline_at"],
    )


def get(db: sa.Engine, saga_id: str) -> SagaRecord:
    """One saga. Raises SagaNotFound."""
    with db.connect() as conn:
        row = conn.execute(sa.select(t.sagas).where(t.sagas.c.saga_id == saga_id)).first()
    if row is None:
        raise SagaNotFound(saga_id)
    return _record(row, with_input=True)


def steps(db: sa.Engine, saga_id: str) -> list[StepRecord]:
    """The saga's step instances, in the order they were reached."""
    st = t.steps.c
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(t.steps).where(st.saga_id == saga_id).order_by(st.stage, st.name)
        ).all()
    return [
        StepRecord(
            step_from(dict(r._mapping)),
            r.output,
            r.task_id,
            r.task_name,
            r.queue,
            r.not_before,
            r.sent_at,
            r.send_count,
        )
        for r in sorted(rows, key=lambda r: (r.stage, r.step, r.idx or 0))
    ]


def history(db: sa.Engine, saga_id: str, *, after: int = 0) -> list[HistoryRecord]:
    """The saga's history after entry `after`, oldest first."""
    h = t.transitions.c
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(t.transitions).where(h.saga_id == saga_id, h.id > after).order_by(h.id)
        ).all()
    return [
        HistoryRecord(
            r.id,
            r.saga_id,
            r.event,
            r.from_status,
            r.to_status,
            r.step,
            r.attempt,
            r.detail,
            r.at,
            r.started_at,
        )
        for r in rows
    ]


def list_sagas(
    db: sa.Engine,
    *,
    status: str | None = None,
    saga_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    search: str | None = None,
    after: Cursor | None = None,
    limit: int = 50,
) -> list[SagaRecord]:
    """Sagas, newest first, filtered; `after` continues a listing past its cursor."""
    s = t.sagas.c
    query = sa.select(*_LISTED).order_by(s.created_at.desc(), s.saga_id.desc())
    if status:
        query = query.where(s.status == status)
    if saga_type:
        query = query.where(s.saga_type == saga_type)
    if created_after:
        query = query.where(s.created_at >= created_after)
    if created_before:
        query = query.where(s.created_at < created_before)
    if search:
        query = query.where(sa.or_(s.saga_id == search, s.idempotency_key == search))
    if after is not None:
        query = query.where(sa.tuple_(s.created_at, s.saga_id) < (after.created_at, after.saga_id))
    with db.connect() as conn:
        rows = conn.execute(query.limit(limit)).all()
    return [_record(r, with_input=False) for r in rows]


def statuses(db: sa.Engine, saga_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of `saga_ids` that exists, in one query."""
    s = t.sagas.c
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(s.saga_id, s.status).where(s.saga_id.in_(list(saga_ids)))
        ).all()
    return {str(r[0]): str(r[1]) for r in rows}


def ping(db: sa.Engine) -> None:
    """Raise if the database cannot be reached."""
    with db.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
