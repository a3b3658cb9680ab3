"""Aggregates of the saga log for the dashboard: counts by status, sagas needing an
operator, the last hour's outcomes, and the workers' heartbeats.

Each statement is served by an index of the saga log: counts by status read, up to a cap,
``ix_sagakit_sagas_status_created`` or ``ix_sagakit_sagas_type_status``, the failed sagas
the same index's ``status = 'failed'`` range, the last hour ``ix_sagakit_sagas_created`` and
``ix_sagakit_sagas_finished``, and compensation failures ``ix_sagakit_transitions_outcomes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .dbapi import Connections
from .reads import LISTED, SagaRecord, _record, _rows, saga_filters

MAX_DURATIONS = 20_000
"""Most finished sagas of the last hour whose durations the percentiles are taken over."""


@dataclass(frozen=True, slots=True)
class FailedSaga:
    """A saga that waits for an operator, with the step it stopped at as stored."""

    record: SagaRecord
    step_status: str | None
    step_error: str | None


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """One worker's heartbeat row."""

    name: str
    pid: int
    started_at: datetime
    beat_at: datetime
    running: int
    reserved: int


COUNT_CAP = 10_000
"""Counts stop here: past it a status reads as "at least COUNT_CAP" (`count_by_status`)."""


def count_by_status(
    db: Connections,
    statuses: Sequence[str],
    *,
    saga_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cap: int = COUNT_CAP,
) -> dict[str, int]:
    """How many sagas are in each status, counted up to `cap` + 1: a count above `cap`
    means "more than `cap`". Each status counts along its own range of an index
    (``ix_sagakit_sagas_status_created``, or ``ix_sagakit_sagas_type_status`` with a type),
    so the cost is bounded by the cap, not by the size of the log."""
    where, params = saga_filters(saga_type, created_after, created_before)
    terms = "".join(f" AND {w}" for w in where)
    parts = []
    for i, status in enumerate(statuses):
        params[f"s{i}"] = status
        parts.append(
            f"SELECT :s{i} AS status, (SELECT count(*) FROM (SELECT 1 FROM sagakit_sagas "
            f"WHERE status = :s{i}{terms} LIMIT :cap) AS c{i}) AS n"
        )
    params["cap"] = cap + 1
    rows = _rows(db, " UNION ALL ".join(parts), params, ("status", "count"))
    return {str(r["status"]): int(r["count"]) for r in rows}


def failed(db: Connections, *, limit: int = 500) -> list[FailedSaga]:
    """The newest `limit` failed sagas, each with the status and error of its failed step."""
    columns = (*LISTED, "step_status", "step_error")
    listed = ", ".join(f"s.{c}" for c in LISTED)
    rows = _rows(
        db,
        f"SELECT {listed}, st.status, st.error FROM sagakit_sagas s "
        "LEFT JOIN sagakit_steps st ON st.saga_id = s.saga_id AND st.name = s.failed_step "
        "WHERE s.status = 'failed' ORDER BY s.created_at DESC, s.saga_id DESC "
        f"LIMIT {int(limit)}",
        {},
        columns,
    )
    return [FailedSaga(_record(r), r["step_status"], r["step_error"]) for r in rows]


def started_since(db: Connections, since: datetime) -> dict[str, int]:
    """Sagas created since `since`, by type."""
    rows = _rows(
        db,
        "SELECT saga_type, count(*) FROM sagakit_sagas WHERE created_at >= :since "
        "GROUP BY saga_type",
        {"since": since},
        ("saga_type", "count"),
    )
    return {str(r["saga_type"]): int(r["count"]) for r in rows}


def finished_since(db: Connections, since: datetime) -> list[tuple[str, str, float]]:
    """(type, status, seconds it took) of sagas that finished since `since`, newest first."""
    rows = _rows(
        db,
        "SELECT saga_type, status, created_at, finished_at FROM sagakit_sagas "
        "WHERE finished_at IS NOT NULL AND finished_at >= :since "
        f"ORDER BY finished_at DESC LIMIT {MAX_DURATIONS}",
        {"since": since},
        ("saga_type", "status", "created_at", "finished_at"),
    )
    return [
        (
            str(r["saga_type"]),
            str(r["status"]),
            (r["finished_at"] - r["created_at"]).total_seconds(),
        )
        for r in rows
    ]


def compensation_failures_since(db: Connections, since: datetime) -> dict[str, int]:
    """Failed compensation attempts since `since`, by saga type."""
    rows = _rows(
        db,
        "SELECT s.saga_type, count(*) FROM sagakit_transitions t "
        "JOIN sagakit_sagas s ON s.saga_id = t.saga_id "
        "WHERE t.at >= :since AND t.started_at IS NOT NULL "
        "AND t.event = 'compensation_failed' GROUP BY s.saga_type",
        {"since": since},
        ("saga_type", "count"),
    )
    return {str(r["saga_type"]): int(r["count"]) for r in rows}


def workers(db: Connections) -> list[WorkerBeat]:
    """Every worker's heartbeat, the latest first."""
    columns = ("name", "pid", "started_at", "beat_at", "running", "reserved")
    rows = _rows(
        db, f"SELECT {', '.join(columns)} FROM sagakit_workers ORDER BY beat_at DESC", {}, columns
    )
    return [
        WorkerBeat(
            str(r["name"]),
            int(r["pid"]),
            r["started_at"],
            r["beat_at"],
            len(r["running"] or ()),
            len(r["reserved"] or ()),
        )
        for r in rows
    ]
