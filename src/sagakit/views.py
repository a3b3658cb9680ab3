"""JSON-able views of a saga for the CLI and the HTTP API (one shape for both)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .store.records import AttemptRecord, SagaRecord, TransitionRecord


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with timezone, or None."""
    return None if value is None else value.isoformat()


def duration(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds between two instants, or None when either is missing."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 4)


def summary_view(record: SagaRecord) -> dict[str, Any]:
    """The fields a listing shows."""
    return {
        "id": record.saga_id,
        "type": record.saga_type,
        "status": record.status,
        "reason": record.reason,
        "failed_step": record.failed_step,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "finished_at": iso(record.finished_at),
        "duration": duration(record.created_at, record.finished_at),
    }


def attempt_view(a: AttemptRecord) -> dict[str, Any]:
    """One attempt of an action or a compensation."""
    return {
        "attempt": a.attempt,
        "direction": a.direction,
        "status": a.status,
        "task_id": a.task_id,
        "task_name": a.task_name,
        "queue": a.queue,
        "worker": a.worker,
        "scheduled_at": iso(a.scheduled_at),
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "duration": duration(a.started_at, a.finished_at),
        "output": a.output,
        "error": a.error,
        "traceback": a.traceback,
    }


def transition_view(h: TransitionRecord) -> dict[str, Any]:
    """One history entry."""
    return {
        "id": h.id,
        "event": h.event,
        "step": h.step,
        "attempt": h.attempt,
        "from": h.from_status,
        "to": h.to_status,
        "at": iso(h.at),
        "detail": h.detail,
    }


def saga_view(
    record: SagaRecord, attempts: list[AttemptRecord], history: list[TransitionRecord]
) -> dict[str, Any]:
    """Everything about one saga: status, steps with their attempts, history."""
    steps: list[dict[str, Any]] = []
    for st in record.state.steps:
        mine = [a for a in attempts if a.step == st.name]
        steps.append(
            {
                "name": st.name,
                "step": st.step,
                "status": st.status.value,
                "item": st.item,
                "output": st.output,
                "error": st.error,
                "attempts": [attempt_view(a) for a in mine if a.direction == "action"],
                "compensations": [attempt_view(a) for a in mine if a.direction == "compensation"],
            }
        )
    return {
        **summary_view(record),
        "input": record.input,
        "definition_version": record.definition_version,
        "idempotency_key": record.idempotency_key,
        "deadline_at": iso(record.deadline_at),
        "steps": steps,
        "history": [transition_view(h) for h in history],
    }
