"""The transition history's vocabulary: the entries a decision writes, and back to events.

Every accepted event is one entry named after it (`EVENT_NAMES`), listing in its detail the
attempts it scheduled (``scheduled``), followed, when the saga's status changed, by one
``saga_<status>`` entry. An outcome's entry carries the attempt's task id, worker, start
time, error and traceback: the history is where an attempt's story is kept, once. Folding
the event entries back through the state machine (`event_of` + `core.ledger.replay`) gives
the stored state.
docs/events.md lists every entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .core.events import (
    CancelRequested,
    CompensationFailed,
    CompensationResolved,
    CompensationSucceeded,
    DeadlineExceeded,
    Decision,
    Event,
    RetryRequested,
    SagaStarted,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from .core.state import JSON, SagaState
from .messages import OutboxMessage

EVENT_NAMES: dict[type, str] = {
    SagaStarted: "saga_started",
    StepSucceeded: "step_completed",
    StepFailed: "step_failed",
    StepTimedOut: "step_timed_out",
    CompensationSucceeded: "step_compensated",
    CompensationFailed: "compensation_failed",
    CancelRequested: "cancel_requested",
    DeadlineExceeded: "deadline_exceeded",
    RetryRequested: "retry_requested",
    CompensationResolved: "compensation_resolved",
}
"""History names of the events (snake_case, past tense)."""

OUTCOME_EVENTS = frozenset(
    {"step_completed", "step_failed", "step_timed_out", "step_compensated", "compensation_failed"}
)
"""Entries that close one attempt; they carry its start time, worker and task id."""
OUTCOME_LABELS: dict[str, tuple[str, str]] = {
    "step_completed": ("action", "succeeded"),
    "step_failed": ("action", "failed"),
    "step_timed_out": ("action", "timed_out"),
    "step_compensated": ("compensation", "succeeded"),
    "compensation_failed": ("compensation", "failed"),
}
"""(direction, outcome) of the attempt each of those entries closes."""
assert set(OUTCOME_LABELS) == OUTCOME_EVENTS


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the worker says about the attempt an outcome closes."""

    task_id: str
    worker: str | None = None
    started_at: datetime | None = None
    traceback: str | None = None
    output: JSON = None
    """A compensation's return value (an action's output is kept with its step instance)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the append-only transition history."""

    saga_id: str
    event: str
    from_status: str | None
    to_status: str | None
    step: str | None
    attempt: int | None
    detail: dict[str, Any] | None
    at: datetime
    started_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        """The entry as the history table's columns."""
        return {
            "saga_id": self.saga_id,
            "event": self.event,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "step": self.step,
            "attempt": self.attempt,
            "detail": self.detail,
            "at": self.at,
            "started_at": self.started_at,
        }


def entries(
    before: SagaState,
    decision: Decision,
    event: Event,
    messages: Sequence[OutboxMessage],
    now: datetime,
    attempt: Attempt | None = None,
) -> list[Entry]:
    """The history entries of one accepted decision, in order."""
    after = decision.state
    detail = _detail(event)
    if attempt is not None:
        detail.update(task_id=attempt.task_id, worker=attempt.worker)
        if attempt.traceback:
            detail["traceback"] = attempt.traceback
        if attempt.output is not None:
            detail["output"] = attempt.output
    if decision.commands:
        # What the decision sent, kept with the event that caused it (one entry per
        # transition): each attempt's schedule, and with `delay` its backoff.
        detail["scheduled"] = [
            _scheduled(command, message)
            for command, message in zip(decision.commands, messages, strict=True)
        ]
    step, number = _subject(event)
    rows = [
        Entry(
            after.saga_id,
            EVENT_NAMES[type(event)],
            before.status.value,
            after.status.value,
            step,
            number,
            detail or None,
            now,
            _started(attempt, now),
        )
    ]
    if before.status != after.status and not isinstance(event, SagaStarted):
        resumed = isinstance(event, RetryRequested)
        # A resumed saga names the step it resumes; a settled one the step that decided it.
        subject = decision.commands[0].step if resumed and decision.commands else after.failed_step
        rows.append(
            Entry(
                after.saga_id,
                "saga_resumed" if resumed else f"saga_{after.status}",
                before.status.value,
                after.status.value,
                subject,
                None,
                {"reason": after.reason} if after.reason else None,
                now,
            )
        )
    return rows


def _started(attempt: Attempt | None, now: datetime) -> datetime | None:
    """An outcome's start time (its finish, when nobody knows when it began)."""
    if attempt is None:
        return None
    return attempt.started_at or now


def _subject(event: Event) -> tuple[str | None, int | None]:
    match event:
        case (
            StepSucceeded()
            | StepFailed()
            | StepTimedOut()
            | CompensationSucceeded()
            | CompensationFailed()
        ):
            return event.step, event.attempt
        case CompensationResolved():
            return event.step, None
        case _:
            return None, None


def _detail(event: Event) -> dict[str, Any]:
    match event:
        case StepFailed():
            return {
                "error": event.error,
                "retryable": event.retryable,
                "error_type": event.error_type,
            }
        case CompensationFailed():
            return {"error": event.error}
        case StepTimedOut() if event.reason:
            return {"error": event.reason}
        case CancelRequested():
            return {"reason": event.reason}
        case CompensationResolved():
            return {"reason": event.reason, "by": event.by}
        case _:
            return {}


def event_of(
    name: str,
    step: str | None,
    attempt: int | None,
    detail: Mapping[str, Any] | None,
    *,
    input: Callable[[], Mapping[str, JSON]],
    output: Callable[[str], JSON],
) -> Event | None:
    """The event an entry records; None for the entries a decision derives.

    `input()` gives the saga's input and `output(step)` an instance's stored output: the
    entries point at them instead of holding copies.
    """
    detail = detail or {}
    if name == "saga_started":
        return SagaStarted(input())
    if name == "cancel_requested":
        return CancelRequested(str(detail.get("reason", "")))
    if name == "deadline_exceeded":
        return DeadlineExceeded()
    if name == "retry_requested":
        return RetryRequested()
    if name == "compensation_resolved" and step is not None:
        return CompensationResolved(step, str(detail.get("reason", "")), str(detail.get("by", "")))
    if step is None or attempt is None or name not in OUTCOME_EVENTS:
        return None
    if name == "step_completed":
        return StepSucceeded(step, attempt, output(step))
    if name == "step_failed":
        return StepFailed(
            step,
            attempt,
            str(detail.get("error", "")),
            bool(detail.get("retryable", True)),
            str(detail.get("error_type", "")),
        )
    if name == "step_timed_out":
        return StepTimedOut(step, attempt, str(detail.get("error", "")))
    if name == "step_compensated":
        return CompensationSucceeded(step, attempt)
    return CompensationFailed(step, attempt, str(detail.get("error", "")))


def _scheduled(command: Any, message: OutboxMessage) -> dict[str, Any]:
    """What the history keeps of one attempt scheduled: with ``carrier``, the delivery
    that ran it where it was (an eager saga) instead of a message of its own."""
    sent = {
        "step": command.step,
        "direction": command.direction,
        "attempt": command.attempt,
        "task_id": message.task_id,
        "task": command.task,
        "queue": command.queue,
        "delay": round(command.delay, 3),
    }
    if message.carrier is not None:
        sent["carrier"] = message.carrier
    return sent
