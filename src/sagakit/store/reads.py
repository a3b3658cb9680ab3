"""The saga log's read side: sagas, their step rows and history, newest first, by cursor.

Lists page by keyset (``created_at, saga_id`` below the cursor), so the millionth saga is
as quick to reach as the first; each filter has an index that serves it in that order.

The statements are plain SQL run on a driver's connection (`dbapi.Connections`), with
the values decoded here as the schema's column types would (`schema.UTCDateTime`, JSON):
a command that only reads (`sagakit list`, `sagakit show`) needs neither SQLAlchemy nor
the schema, and every entry point reads through these same statements.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..core.codec import (
    HEAD_COLUMNS,
    HISTORY_COLUMNS,
    MESSAGE_COLUMNS,
    STEP_COLUMNS,
    head_from,
    step_from,
)
from ..core.errors import SagaNotFound
from ..core.state import SagaState, StepState
from .dbapi import Connections


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
    choreographed: bool = False
    """Folded from a choreography's events by its tracker (`sagakit.choreography`)."""

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
    carrier: str | None = None
    """The delivery running this attempt where it is (an eager saga's next step)."""


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


LISTED = (
    "saga_id",
    "saga_type",
    "definition_version",
    *HEAD_COLUMNS,
    "idempotency_key",
    "created_at",
    "updated_at",
    "finished_at",
    "deadline_at",
    "choreographed",
)
"""A saga row's columns but its input (which only `get` reads)."""
STEP_READ = (*STEP_COLUMNS, "output", *MESSAGE_COLUMNS)
"""A step row's columns: the instance's state, its output and its current message."""
HISTORY_READ = ("id", *HISTORY_COLUMNS)

JSON_COLUMNS = frozenset(
    {"input", "sources", "item", "output", "detail", "running", "reserved", "definitions"}
)
"""Columns of the schema's JSON type (text on SQLite)."""
TIME_COLUMNS = frozenset(
    {"created_at", "updated_at", "finished_at", "deadline_at", "at", "started_at", "beat_at"}
).union({"not_before", "sent_at"})
"""Columns of the schema's `UTCDateTime` type (naive UTC text on SQLite)."""


def _sql(db: Connections, text: str) -> str:
    """`text` with its ``:name`` parameters in the driver's style."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text) if db.postgres else text


def _rows(
    db: Connections, text: str, params: Mapping[str, Any], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """Run one statement; its rows by column, decoded."""
    with db.connect() as conn:
        rows = conn.execute(_sql(db, text), _bound(db, params)).fetchall()
    return [_decoded(db, dict(zip(columns, row, strict=True))) for row in rows]


def _bound(db: Connections, params: Mapping[str, Any]) -> dict[str, Any]:
    """Datetimes as the log stores them: on SQLite, UTC text (as `schema.UTCDateTime`)."""
    if db.postgres:
        return dict(params)
    return {
        k: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
        for k, v in params.items()
    }


def _decoded(db: Connections, row: dict[str, Any]) -> dict[str, Any]:
    """JSON columns as values (SQLite holds text) and times as UTC datetimes."""
    for name in JSON_COLUMNS.intersection(row):
        if isinstance(row[name], str) and not db.postgres:
            row[name] = json.loads(row[name])
    for name in TIME_COLUMNS.intersection(row):
        value = row[name]
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value is not None:
            row[name] = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return row


def _record(values: Mapping[str, Any]) -> SagaRecord:
    return SagaRecord(
        state=head_from(values),
        input=values.get("input"),
        idempotency_key=values["idempotency_key"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        finished_at=values["finished_at"],
        deadline_at=values["deadline_at"],
        choreographed=bool(values.get("choreographed")),
    )


def get(db: Connections, saga_id: str) -> SagaRecord:
    """One saga. Raises SagaNotFound."""
    columns = (*LISTED, "input")
    rows = _rows(
        db,
        f"SELECT {', '.join(columns)} FROM sagakit_sagas WHERE saga_id = :saga_id",
        {"saga_id": saga_id},
        columns,
    )
    if not rows:
        raise SagaNotFound(saga_id)
    return _record(rows[0])


def steps(db: Connections, saga_id: str) -> list[StepRecord]:
    """The saga's step instances, in the order they were reached."""
    rows = _rows(
        db,
        f"SELECT {', '.join(STEP_READ)} FROM sagakit_steps WHERE saga_id = :saga_id "
        "ORDER BY stage, name",
        {"saga_id": saga_id},
        STEP_READ,
    )
    return [
        StepRecord(
            step_from(r),
            r["output"],
            r["task_id"],
            r["task_name"],
            r["queue"],
            r["not_before"],
            r["sent_at"],
            r["send_count"],
            r["carrier"],
        )
        for r in sorted(rows, key=lambda r: (r["stage"], r["step"], r["idx"] or 0))
    ]


def history(db: Connections, saga_id: str, *, after: int = 0) -> list[HistoryRecord]:
    """The saga's history after entry `after`, oldest first."""
    rows = _rows(
        db,
        f"SELECT {', '.join(HISTORY_READ)} FROM sagakit_transitions "
        "WHERE saga_id = :saga_id AND id > :after ORDER BY id",
        {"saga_id": saga_id, "after": after},
        HISTORY_READ,
    )
    return [HistoryRecord(**r) for r in rows]


def saga_filters(
    saga_type: str | None, created_after: datetime | None, created_before: datetime | None
) -> tuple[list[str], dict[str, Any]]:
    """WHERE terms and parameters of a listing's type and time-range filters."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if saga_type:
        where.append("saga_type = :saga_type")
        params["saga_type"] = saga_type
    if created_after:
        where.append("created_at >= :created_after")
        params["created_after"] = created_after
    if created_before:
        where.append("created_at < :created_before")
        params["created_before"] = created_before
    return where, params


def list_sagas(
    db: Connections,
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
    where, params = saga_filters(saga_type, created_after, created_before)
    if status:
        where.append("status = :status")
        params["status"] = status
    if search:
        where.append("(saga_id = :search OR idempotency_key = :search)")
        params["search"] = search
    if after is not None:
        # A row comparison: the indexes on (..., created_at, saga_id) serve it as one range.
        where.append("(created_at, saga_id) < (:after_created, :after_id)")
        params |= {"after_created": after.created_at, "after_id": after.saga_id}
    rows = _rows(
        db,
        f"SELECT {', '.join(LISTED)} FROM sagakit_sagas"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY created_at DESC, saga_id DESC LIMIT {int(limit)}",
        params,
        LISTED,
    )
    return [_record(r) for r in rows]


def statuses(db: Connections, saga_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of `saga_ids` that exists, in one query."""
    ids = list(saga_ids)
    if not ids:
        return {}
    params: dict[str, Any]
    if db.postgres:
        text, params = "saga_id = ANY(:ids)", {"ids": ids}
    else:
        names = [f"id{i}" for i in range(len(ids))]
        text = f"saga_id IN ({', '.join(':' + n for n in names)})"
        params = dict(zip(names, ids, strict=True))
    rows = _rows(
        db,
        f"SELECT saga_id, status FROM sagakit_sagas WHERE {text}",
        params,
        ("saga_id", "status"),
    )
    return {str(r["saga_id"]): str(r["status"]) for r in rows}


def running(db: Connections) -> list[tuple[str, str, float]]:
    """(worker, task id, epoch seconds it began) of each attempt a live worker runs.

    A heartbeat's ``running`` holds ``[task_id, started, soft_limit]`` lists
    (`recovery.Held`, as `recovery.beat` writes them).
    """
    rows = _rows(db, "SELECT name, running FROM sagakit_workers", {}, ("name", "running"))
    return [
        (str(r["name"]), str(held[0]), float(held[1]))
        for r in rows
        for held in r["running"] or ()
        if held[1] is not None
    ]


def deployed(db: Connections) -> dict[str, set[int]] | None:
    """The definition versions the live workers can advance, by saga type; None when no
    worker says (none runs, or all predate the column's writer)."""
    rows = _rows(db, "SELECT definitions FROM sagakit_workers", {}, ("definitions",))
    said = [r["definitions"] for r in rows if r["definitions"] is not None]
    if not said:
        return None
    found: dict[str, set[int]] = {}
    for pairs in said:
        for saga_type, version in pairs:
            found.setdefault(str(saga_type), set()).add(int(version))
    return found


def has_log(db: Connections) -> bool:
    """Whether the saga log's tables exist (a database nothing ever ran on has none)."""
    text = (
        "SELECT to_regclass('sagakit_sagas') IS NOT NULL"
        if db.postgres
        else "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sagakit_sagas'"
    )
    with db.connect() as conn:
        return bool(conn.execute(text).fetchone()[0])


def missing_log(db: Connections, error: BaseException) -> bool:
    """Whether `error`, raised by a read, only says that the saga log has no tables yet."""
    if not isinstance(error, _driver_errors()):
        return False
    try:
        return not has_log(db)
    except Exception:
        return False


def _driver_errors() -> tuple[type[BaseException], ...]:
    """The drivers' error classes (only those loaded: an error can only be of those)."""
    named = (("sqlite3", "Error"), ("psycopg", "Error"), ("sqlalchemy.exc", "DBAPIError"))
    return tuple(
        cls
        for module, name in named
        if isinstance(cls := getattr(sys.modules.get(module), name, None), type)
    )


def ping(db: Connections) -> None:
    """Raise if the database cannot be reached."""
    with db.connect() as conn:
        conn.execute("SELECT 1").fetchone()
