"""The engine: the one place where the pure core meets the saga log and the broker.

A transition is: lock the saga row, run `decide`, write the new state, the history, the
attempt rows and the outbox rows, commit; then send the messages that are due and publish
the history entries. A crash after the commit loses nothing: the sweeper re-sends outbox rows
that no worker claimed (`redrive_after`), fires timeouts and deadlines.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .core.definition import Saga
from .core.errors import InvalidInput, UnknownSagaType
from .core.machine import (
    CancelRequested,
    CompensationFailed,
    CompensationSucceeded,
    DeadlineExceeded,
    Decision,
    Event,
    RetryRequested,
    RunTask,
    SagaStarted,
    SagaState,
    StepFailed,
    StepStatus,
    StepSucceeded,
    StepTimedOut,
    decide,
)
from .ports import Dispatcher, EventPublisher
from .store.records import AttemptRecord, Claim, OutboxMessage, SagaRecord, TransitionRecord
from .store.sql import SqlSagaStore

logger = logging.getLogger(__name__)

SAGA_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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
}
"""History event names (snake_case, past tense); docs/events.md lists them all."""


class AttemptLost(Exception):
    """An attempt outlived its timeout, or the worker running it died."""


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_saga_id() -> str:
    """Return a fresh, URL-safe saga id."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class StartResult:
    """The saga a start request refers to; `created` is False for a repeated key."""

    saga_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Identity of the worker process a sweeper runs in."""

    name: str
    pid: int
    started_at: datetime


@dataclass(slots=True)
class SweepReport:
    """What one sweep did."""

    resent: int = 0
    timed_out: int = 0
    deadlines: int = 0


@dataclass(slots=True)
class _Applied:
    decision: Decision | None
    messages: list[OutboxMessage] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    """Starts, advances, cancels and retries sagas against the saga log."""

    def __init__(
        self,
        store: SqlSagaStore,
        sagas: Mapping[str, Saga],
        dispatcher: Dispatcher | None,
        *,
        events: EventPublisher | None = None,
        clock: Callable[[], datetime] = utcnow,
        redrive_after: float = 30.0,
        timeout_grace: float = 5.0,
        worker_lost_after: float | None = 30.0,
    ) -> None:
        self.store = store
        self.sagas = dict(sagas)
        self.dispatcher = dispatcher
        self.events = events
        self.clock = clock
        self.redrive_after = redrive_after
        self.timeout_grace = timeout_grace
        self.worker_lost_after = worker_lost_after

    # --- application API -------------------------------------------------------------

    def definition(self, saga_type: str) -> Saga:
        """Return the registered definition. Raises UnknownSagaType."""
        try:
            return self.sagas[saga_type]
        except KeyError:
            raise UnknownSagaType(saga_type, list(self.sagas)) from None

    def start(
        self,
        saga_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        saga_id: str | None = None,
    ) -> StartResult:
        """Create a saga and send its first step; a repeated key returns the first saga."""
        saga = self.definition(saga_type)
        data = _validated_input(saga, input if input is not None else {})
        saga_id = saga_id or new_saga_id()
        if not SAGA_ID.match(saga_id):
            raise InvalidInput("saga_id", f"{saga_id!r} must match {SAGA_ID.pattern}")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise InvalidInput("idempotency_key", "must be 1 to 200 characters")
        now = self.clock()
        deadline = now + timedelta(seconds=saga.timeout) if saga.timeout else None
        state = SagaState(saga_id, saga.name, saga.version, data)
        with self.store.begin() as conn:
            existing = self.store.insert_saga(
                conn, state, idempotency_key=idempotency_key, deadline_at=deadline, now=now
            )
            if existing is not None:
                return StartResult(existing, created=False)
            applied = self._apply(conn, saga, state, SagaStarted(), now)
        self._after_commit(applied, now)
        return StartResult(saga_id, created=True)

    def cancel(self, saga_id: str, reason: str = "cancelled by operator") -> SagaRecord:
        """Stop forward steps and compensate. Raises InvalidTransition past the pivot."""
        if "\x00" in reason or not reason.strip():
            raise InvalidInput("reason", "must be non-empty text without NUL characters")
        self.record(saga_id, CancelRequested(reason))
        return self.store.get(saga_id)

    def retry(self, saga_id: str) -> SagaRecord:
        """Resume a failed saga where it stopped. Raises InvalidTransition otherwise."""
        self.record(saga_id, RetryRequested())
        return self.store.get(saga_id)

    def get(self, saga_id: str) -> SagaRecord:
        """Return the saga. Raises SagaNotFound."""
        return self.store.get(saga_id)

    def attempts(self, saga_id: str) -> list[AttemptRecord]:
        """Every attempt of the saga's steps and compensations."""
        return self.store.attempts(saga_id)

    def history(self, saga_id: str) -> list[TransitionRecord]:
        """The saga's transition history."""
        return self.store.history(saga_id)

    def wait(self, saga_id: str, timeout: float = 60.0, poll: float = 0.05) -> SagaRecord:
        """Block until the saga settles (scripts and tests only). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.store.get(saga_id)
            if record.state.status.settled:
                return record
            if time.monotonic() >= deadline:
                raise TimeoutError(f"saga {saga_id} still {record.status} after {timeout}s")
            time.sleep(poll)

    # --- worker API ----------------------------------------------------------------------

    def claim(self, task_id: str, worker: str) -> Claim | None:
        """Mark a delivered attempt as started; duplicates and stale attempts are refused."""
        now = self.clock()
        claim = self.store.claim(task_id, worker=worker, now=now, grace=self.timeout_grace)
        if claim is not None and claim.accepted:
            event = "step_started" if claim.direction == "action" else "compensation_started"
            self._publish(
                [
                    {
                        "saga_id": claim.saga_id,
                        "event": event,
                        "step": claim.step,
                        "attempt": claim.attempt,
                        "detail": {"worker": worker, "task_id": task_id},
                        "at": now,
                    }
                ]
            )
        return claim

    def report(
        self,
        claim: Claim,
        task_id: str,
        *,
        output: Any = None,
        error: BaseException | None = None,
        traceback: str | None = None,
        retryable: bool = True,
        timed_out: bool = False,
    ) -> None:
        """Record an attempt's outcome and advance the saga, in one transaction."""
        event: Event
        text = None if error is None else f"{type(error).__name__}: {error}"
        if claim.direction == "action":
            if timed_out:
                event = StepTimedOut(claim.step, claim.attempt)
            elif error is not None:
                event = StepFailed(
                    claim.step, claim.attempt, text or "", retryable, type(error).__name__
                )
            else:
                event = StepSucceeded(claim.step, claim.attempt, _jsonable(output))
        elif error is not None or timed_out:
            event = CompensationFailed(claim.step, claim.attempt, text or "timed out")
        else:
            event = CompensationSucceeded(claim.step, claim.attempt)
        status = "timed_out" if timed_out else ("failed" if error is not None else "succeeded")
        self.record(
            claim.saga_id,
            event,
            task_id=task_id,
            attempt_status=status,
            output=_jsonable(output),
            error=text,
            traceback=traceback,
        )

    def record(
        self,
        saga_id: str,
        event: Event,
        *,
        task_id: str | None = None,
        attempt_status: str | None = None,
        output: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> Decision | None:
        """Apply one event under the saga's row lock. Raises SagaNotFound, InvalidTransition."""
        now = self.clock()
        with self.store.begin() as conn:
            record = self.store.lock(conn, saga_id)
            if task_id is not None and attempt_status is not None:
                self.store.finish_attempt(
                    conn,
                    task_id,
                    status=attempt_status,
                    now=now,
                    output=output,
                    error=error,
                    traceback=traceback,
                )
            saga = self.definition(record.saga_type)
            applied = self._apply(conn, saga, record.state, event, now)
        self._after_commit(applied, now)
        return applied.decision

    def sweep(self, *, limit: int = 200, heartbeat: Heartbeat | None = None) -> SweepReport:
        """Beat for this worker; re-send due or lost messages, fire timeouts and deadlines."""
        report = SweepReport()
        now = self.clock()
        if heartbeat is not None:
            self.store.beat(
                heartbeat.name, pid=heartbeat.pid, started_at=heartbeat.started_at, now=now
            )
        due = self.store.take_due(now=now, redrive_after=self.redrive_after, limit=limit)
        report.resent = self._send(due)
        # One saga that cannot be advanced here (say, a type this process does not know)
        # must not stop the sweep for the others.
        expired = self.store.expired_attempts(
            now=now, limit=limit, lost_after=self.worker_lost_after
        )
        for attempt, why in expired:
            try:
                report.timed_out += self._expire(attempt, why)
            except Exception:
                logger.warning(
                    "timeout not applied", exc_info=True, extra={"saga_id": attempt.saga_id}
                )
        for saga_id in self.store.expired_sagas(now=now, limit=limit):
            try:
                decision = self.record(saga_id, DeadlineExceeded())
            except Exception:
                logger.warning("deadline not applied", exc_info=True, extra={"saga_id": saga_id})
                continue
            report.deadlines += int(decision is not None and not decision.ignored)
        return report

    def beat(self, heartbeat: Heartbeat) -> None:
        """Record that this worker is alive (its running attempts are not lost)."""
        self.store.beat(
            heartbeat.name, pid=heartbeat.pid, started_at=heartbeat.started_at, now=self.clock()
        )

    # --- internals -----------------------------------------------------------------------

    def _expire(self, attempt: AttemptRecord, why: str) -> int:
        claim = Claim(
            attempt.saga_id, attempt.step, attempt.direction, attempt.attempt, True, attempt.status
        )
        logger.warning(
            "attempt timed out: %s",
            why,
            extra={"saga_id": attempt.saga_id, "step": attempt.step, "attempt": attempt.attempt},
        )
        self.report(claim, attempt.task_id, error=AttemptLost(why), timed_out=True)
        return 1

    def _apply(
        self, conn: sa.Connection, saga: Saga, state: SagaState, event: Event, now: datetime
    ) -> _Applied:
        decision = decide(saga, state, event)
        if decision.ignored:
            logger.info(
                "outcome ignored",
                extra={
                    "saga_id": state.saga_id,
                    "step": getattr(event, "step", "-"),
                    "attempt": getattr(event, "attempt", "-"),
                },
            )
            return _Applied(decision)
        new = decision.state
        self.store.save(conn, new, now=now)
        messages = [self._message(new, command, now) for command in decision.commands]
        self.store.schedule(
            conn,
            [(m, _attempt_fields(c)) for m, c in zip(messages, decision.commands, strict=True)],
            now=now,
        )
        history = _history(state, decision, event, messages, now)
        self.store.append_history(conn, history)
        if state.status != new.status:
            logger.info("saga transition", extra={"saga_id": new.saga_id})
        return _Applied(decision, messages, history)

    def _message(self, state: SagaState, command: RunTask, now: datetime) -> OutboxMessage:
        kind = "fwd" if command.direction == "action" else "comp"
        step_part = command.step.replace("[", "-").replace("]", "")
        task_id = f"{state.saga_id}.{command.position:02d}.{step_part}.{kind}.{command.attempt}"
        kwargs: dict[str, Any] = {
            "saga_id": state.saga_id,
            "saga_type": state.saga_type,
            "step": command.step,
            "attempt": command.attempt,
            "input": dict(state.input),
            "results": {
                s.name: s.output
                for s in state.steps
                if s.output is not None and s.status is not StepStatus.RUNNING
            },
        }
        if command.item is not None:
            kwargs["item"] = command.item
        time_limit = None if command.timeout is None else command.timeout + self.timeout_grace
        not_before = now + timedelta(seconds=command.delay)
        return OutboxMessage(
            state.saga_id, task_id, command.task, command.queue, kwargs, time_limit, not_before
        )

    def _after_commit(self, applied: _Applied, now: datetime) -> None:
        self._send([m for m in applied.messages if m.not_before <= now])
        self._publish(applied.history)

    def _send(self, messages: Sequence[OutboxMessage]) -> int:
        if self.dispatcher is None or not messages:
            return 0
        failed: list[str] = []
        for message in messages:
            try:
                self.dispatcher.send(message)
            except Exception:
                logger.warning(
                    "send failed; the sweeper will retry",
                    exc_info=True,
                    extra={"saga_id": message.saga_id},
                )
                failed.append(message.task_id)
        if failed:
            self.store.unsend(failed)
        return len(messages) - len(failed)

    def _publish(self, entries: Sequence[dict[str, Any]]) -> None:
        if not entries or self.events is None:
            return
        try:
            self.events.publish(entries)
        except Exception:
            logger.warning("event publish failed", exc_info=True)


def _attempt_fields(command: RunTask) -> dict[str, Any]:
    return {
        "step": command.step,
        "direction": command.direction,
        "attempt": command.attempt,
        "timeout": command.timeout,
    }


def _history(
    before: SagaState,
    decision: Decision,
    event: Event,
    messages: Sequence[OutboxMessage],
    now: datetime,
) -> list[dict[str, Any]]:
    after = decision.state
    detail: dict[str, Any] = {}
    for name in ("error", "reason"):
        value = getattr(event, name, None)
        if value:
            detail[name] = value
    if isinstance(event, StepFailed):
        detail["retryable"] = event.retryable
    rows = [
        {
            "saga_id": after.saga_id,
            "event": EVENT_NAMES[type(event)],
            "from_status": before.status.value,
            "to_status": after.status.value,
            "step": getattr(event, "step", None),
            "attempt": getattr(event, "attempt", None),
            "detail": detail or None,
            "at": now,
        }
    ]
    for command, message in zip(decision.commands, messages, strict=True):
        rows.append(
            {
                "saga_id": after.saga_id,
                "event": "step_scheduled"
                if command.direction == "action"
                else "compensation_scheduled",
                "from_status": after.status.value,
                "to_status": after.status.value,
                "step": command.step,
                "attempt": command.attempt,
                "detail": {
                    "task_id": message.task_id,
                    "queue": command.queue,
                    "delay": round(command.delay, 3),
                },
                "at": now,
            }
        )
    if before.status != after.status and not isinstance(event, SagaStarted):
        resumed = isinstance(event, RetryRequested)
        name = "saga_resumed" if resumed else f"saga_{after.status}"
        # A resumed saga names the step it resumes; a settled one the step that decided it.
        step = decision.commands[0].step if resumed and decision.commands else after.failed_step
        rows.append(
            {
                "saga_id": after.saga_id,
                "event": name,
                "from_status": before.status.value,
                "to_status": after.status.value,
                "step": step,
                "attempt": None,
                "detail": {"reason": after.reason} if after.reason else None,
                "at": now,
            }
        )
    return rows


def _validated_input(saga: Saga, value: Any) -> dict[str, Any]:
    data = _json_object(value, "input")
    if saga.input_model is None:
        return data
    try:
        model = saga.input_model.model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            where = ".".join(str(part) for part in ("input", *first.get("loc", ())))
            raise InvalidInput(where, str(first.get("msg", exc))) from None
        raise InvalidInput("input", str(exc)) from None
    return _json_object(model.model_dump(mode="json"), "input")


def _json_object(value: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(field_name, "must be a JSON object")
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field_name, f"must be JSON-serializable ({exc})") from None
    if _has_nul(value):  # PostgreSQL's text and jsonb cannot hold NUL
        raise InvalidInput(field_name, "must not contain NUL characters")
    return dict(json.loads(text))


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
