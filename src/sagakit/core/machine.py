"""The saga state machine: decide(definition, state, event) -> (state, commands).

Rule: this module performs no I/O, reads no clock, makes no ids and does not log. Callers
feed it events and carry out the commands it returns; a stale or duplicate outcome (an old
attempt, a redelivered message) is recognised by its attempt number and ignored.

Compensation order lives here and only here: completed steps are undone one at a time, in
reverse order of completion, and only once nothing is in flight (a failing branch of a
parallel group waits for its siblings, then every sibling that completed is compensated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal, assert_never

from .definition import Saga, StepKind
from .errors import InvalidTransition

JSON = Any
Direction = Literal["action", "compensation"]


class SagaStatus(StrEnum):
    """Where a saga stands; `failed` always means an operator is needed."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        """True when nothing more happens without an operator."""
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


SETTLED_STATUSES: tuple[str, ...] = tuple(s.value for s in SagaStatus if s.settled)
"""Status words of sagas that nothing advances without an operator."""


class StepStatus(StrEnum):
    """Where one step instance stands."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


@dataclass(frozen=True, slots=True)
class StepState:
    """One step instance: a plain step, or one item of a fanned-out step."""

    name: str
    step: str
    stage: int
    index: int | None = None
    item: JSON = None
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    attempt_base: int = 0
    """Attempts made before the last operator retry; the budget counts from here."""
    compensation_attempt: int = 0
    compensation_base: int = 0
    order: int | None = None
    """Sequence number at which the step took effect (or may have); drives undo order."""
    maybe_effect: bool = False
    """An attempt timed out, so the step may have taken effect even if it then failed."""
    output: JSON = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SagaState:
    """Everything `decide` needs to know about one saga."""

    saga_id: str
    saga_type: str
    version: int
    input: Mapping[str, JSON]
    status: SagaStatus = SagaStatus.PENDING
    stage: int = -1
    steps: tuple[StepState, ...] = ()
    seq: int = 0
    pivot_passed: bool = False
    reason: str | None = None
    failed_step: str | None = None
    cause: str | None = None
    """Why compensation began; kept when a compensation failure overwrites `reason`."""
    cause_step: str | None = None

    def find(self, name: str) -> StepState | None:
        """Return the step instance called `name`, if the saga has reached it."""
        return next((s for s in self.steps if s.name == name), None)

    def with_step(self, new: StepState) -> SagaState:
        """Return a copy with one step instance replaced."""
        return replace(self, steps=tuple(new if s.name == new.name else s for s in self.steps))

    @property
    def in_flight(self) -> bool:
        """True while an action or a compensation is outstanding."""
        busy = (StepStatus.RUNNING, StepStatus.COMPENSATING)
        return any(s.status in busy for s in self.steps)


# --- events: what happened (past tense) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SagaStarted:
    """The saga was created and may begin."""


@dataclass(frozen=True, slots=True)
class StepSucceeded:
    """An action attempt returned."""

    step: str
    attempt: int
    output: JSON = None


@dataclass(frozen=True, slots=True)
class StepFailed:
    """An action attempt raised; `retryable` is False for NonRetryableError and friends."""

    step: str
    attempt: int
    error: str
    retryable: bool = True
    error_type: str = ""
    """Exception class name, checked against the step's `non_retryable` list."""


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    """An action attempt outlived its timeout; it may still have taken effect."""

    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CompensationSucceeded:
    """A compensation attempt returned."""

    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CompensationFailed:
    """A compensation attempt raised or timed out."""

    step: str
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Someone asked to stop the saga and undo what it did."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeadlineExceeded:
    """The saga's deadline passed before it finished."""


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """An operator asked a failed saga to resume where it stopped."""


Event = (
    SagaStarted
    | StepSucceeded
    | StepFailed
    | StepTimedOut
    | CompensationSucceeded
    | CompensationFailed
    | CancelRequested
    | DeadlineExceeded
    | RetryRequested
)


# --- commands: what to do (imperative) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunTask:
    """Send one attempt of an action or a compensation to its service's queue."""

    step: str
    direction: Direction
    attempt: int
    task: str
    queue: str
    position: int
    delay: float = 0.0
    timeout: float | None = None
    item: JSON = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The new state and the commands to carry out; `ignored` marks a no-op event."""

    state: SagaState
    commands: tuple[RunTask, ...] = ()
    ignored: bool = False


def decide(saga: Saga, state: SagaState, event: Event) -> Decision:
    """Apply one event to a saga. Raises InvalidTransition for a disallowed request."""
    match event:
        case SagaStarted():
            if state.status is not SagaStatus.PENDING:
                return Decision(state, ignored=True)
            return _enter_stage(saga, replace(state, status=SagaStatus.RUNNING), 0)
        case StepSucceeded():
            return _step_succeeded(saga, state, event)
        case StepFailed():
            retryable = event.retryable and event.error_type not in (
                saga.step(event.step).retry.non_retryable if state.find(event.step) else ()
            )
            return _step_failed(
                saga,
                state,
                event.step,
                event.attempt,
                event.error,
                retryable=retryable,
                timed_out=False,
            )
        case StepTimedOut():
            return _step_failed(
                saga,
                state,
                event.step,
                event.attempt,
                f"attempt {event.attempt} timed out",
                retryable=True,
                timed_out=True,
            )
        case CompensationSucceeded():
            return _compensation_succeeded(saga, state, event)
        case CompensationFailed():
            return _compensation_failed(saga, state, event)
        case CancelRequested():
            return _cancel(saga, state, event.reason)
        case DeadlineExceeded():
            busy = state.status not in (SagaStatus.PENDING, SagaStatus.RUNNING)
            if busy or state.pivot_passed:
                return Decision(state, ignored=True)
            return _begin_compensation(saga, state, "deadline exceeded", None)
        case RetryRequested():
            return _retry(saga, state)
        case _:
            assert_never(event)


def _action(saga: Saga, st: StepState, attempt: int, delay: float) -> RunTask:
    step = saga.step(st.step)
    return RunTask(
        st.name,
        "action",
        attempt,
        step.action,
        step.queue,
        saga.position(st.step),
        delay,
        step.timeout,
        st.item,
    )


def _compensation(saga: Saga, st: StepState, attempt: int, delay: float) -> RunTask:
    step = saga.step(st.step)
    assert step.compensation is not None
    return RunTask(
        st.name,
        "compensation",
        attempt,
        step.compensation,
        step.queue,
        saga.position(st.step),
        delay,
        step.timeout,
        st.item,
    )


def _resolve_items(state: SagaState, path: str) -> list[JSON] | str:
    source, _, key = path.partition(".")
    if source == "input":
        container: JSON = state.input
    else:
        found = state.find(source)
        container = found.output if found is not None else None
    value = container.get(key) if isinstance(container, Mapping) else None
    if not isinstance(value, list):
        return f"for_each {path!r} did not resolve to a list"
    return value


def _enter_stage(saga: Saga, state: SagaState, stage: int) -> Decision:
    if stage >= len(saga.steps):
        return Decision(replace(state, status=SagaStatus.COMPLETED, stage=stage))
    created: list[StepState] = []
    passes_pivot = any(step.kind is StepKind.RETRIABLE for step in saga.stage_steps(stage))
    for step in saga.stage_steps(stage):
        if step.for_each is None:
            created.append(StepState(step.name, step.name, stage))
            continue
        items = _resolve_items(state, step.for_each)
        if isinstance(items, str):
            reason = f"step {step.name!r}: {items}"
            if state.pivot_passed or passes_pivot:
                # Nothing after the pivot may be undone: stop and wait for an operator.
                return Decision(
                    replace(
                        state,
                        status=SagaStatus.FAILED,
                        reason=reason,
                        failed_step=step.name,
                        pivot_passed=True,
                    )
                )
            return _begin_compensation(saga, state, reason, step.name)
        created.extend(
            StepState(f"{step.name}[{i}]", step.name, stage, i, item)
            for i, item in enumerate(items)
        )
    running = tuple(replace(s, status=StepStatus.RUNNING, attempt=1) for s in created)
    state = replace(
        state,
        stage=stage,
        steps=state.steps + running,
        pivot_passed=state.pivot_passed or passes_pivot,
    )
    if not running:
        return _enter_stage(saga, state, stage + 1)
    return Decision(state, tuple(_action(saga, s, 1, 0.0) for s in running))


def _current(
    state: SagaState, name: str, status: StepStatus, attempt: int, compensation: bool = False
) -> StepState | None:
    st = state.find(name)
    if st is None or st.status is not status:
        return None
    current = st.compensation_attempt if compensation else st.attempt
    return st if current == attempt else None


def _step_succeeded(saga: Saga, state: SagaState, event: StepSucceeded) -> Decision:
    st = _current(state, event.step, StepStatus.RUNNING, event.attempt)
    if st is None:
        return Decision(state, ignored=True)
    seq = state.seq + 1
    done = replace(st, status=StepStatus.SUCCEEDED, output=event.output, order=seq, error=None)
    pivot = saga.step(st.step).kind is StepKind.PIVOT
    state = replace(state.with_step(done), seq=seq, pivot_passed=state.pivot_passed or pivot)
    if state.status is SagaStatus.COMPENSATING:
        if not pivot:
            return _continue_compensation(saga, state)
        # A cancel or deadline was waiting on the pivot, which went through: there is no
        # way back any more, so the saga runs to completion.
        state = replace(state, status=SagaStatus.RUNNING, reason=None)
    if state.status is not SagaStatus.RUNNING:
        return Decision(state)
    stage = [s for s in state.steps if s.stage == state.stage]
    if all(s.status is StepStatus.SUCCEEDED for s in stage):
        return _enter_stage(saga, state, state.stage + 1)
    return Decision(state)


def _step_failed(
    saga: Saga,
    state: SagaState,
    name: str,
    attempt: int,
    error: str,
    *,
    retryable: bool,
    timed_out: bool,
) -> Decision:
    st = _current(state, name, StepStatus.RUNNING, attempt)
    if st is None:
        return Decision(state, ignored=True)
    step = saga.step(st.step)
    policy = step.effective_retry
    used = st.attempt - st.attempt_base
    maybe = st.maybe_effect or timed_out
    if retryable and state.status is SagaStatus.RUNNING and policy.allows(used):
        delay = policy.delay(used, f"{state.saga_id}:{st.name}")
        again = replace(st, attempt=st.attempt + 1, maybe_effect=maybe, error=error)
        return Decision(state.with_step(again), (_action(saga, again, again.attempt, delay),))
    seq = state.seq + 1 if maybe else state.seq
    failed = replace(
        st, status=StepStatus.FAILED, maybe_effect=maybe, error=error, order=seq if maybe else None
    )
    state = replace(state.with_step(failed), seq=seq)
    if state.status is SagaStatus.COMPENSATING:
        return _continue_compensation(saga, state)
    if state.status is not SagaStatus.RUNNING:
        return Decision(state)
    reason = f"step {st.name!r} failed: {error}"
    if state.pivot_passed:
        # Nothing after the pivot may be undone: stop and wait for an operator.
        return Decision(
            replace(state, status=SagaStatus.FAILED, reason=reason, failed_step=st.name)
        )
    return _begin_compensation(saga, state, reason, st.name)


def _begin_compensation(
    saga: Saga, state: SagaState, reason: str, failed_step: str | None
) -> Decision:
    state = replace(
        state,
        status=SagaStatus.COMPENSATING,
        reason=reason,
        failed_step=failed_step,
        cause=reason,
        cause_step=failed_step,
    )
    return _continue_compensation(saga, state)


def _continue_compensation(saga: Saga, state: SagaState) -> Decision:
    if state.in_flight:
        return Decision(state)
    undo = [
        s
        for s in state.steps
        if saga.step(s.step).compensation is not None
        and (s.status is StepStatus.SUCCEEDED or (s.status is StepStatus.FAILED and s.maybe_effect))
    ]
    if not undo:
        return Decision(replace(state, status=SagaStatus.COMPENSATED))
    last = max(undo, key=lambda s: s.order or 0)
    undoing = replace(
        last, status=StepStatus.COMPENSATING, compensation_attempt=last.compensation_attempt + 1
    )
    command = _compensation(saga, undoing, undoing.compensation_attempt, 0.0)
    return Decision(state.with_step(undoing), (command,))


def _compensation_succeeded(saga: Saga, state: SagaState, event: CompensationSucceeded) -> Decision:
    st = _current(state, event.step, StepStatus.COMPENSATING, event.attempt, compensation=True)
    if st is None:
        return Decision(state, ignored=True)
    state = state.with_step(replace(st, status=StepStatus.COMPENSATED, error=None))
    return _continue_compensation(saga, state)


def _compensation_failed(saga: Saga, state: SagaState, event: CompensationFailed) -> Decision:
    st = _current(state, event.step, StepStatus.COMPENSATING, event.attempt, compensation=True)
    if st is None:
        return Decision(state, ignored=True)
    policy = saga.step(st.step).compensation_retry
    used = st.compensation_attempt - st.compensation_base
    if policy.allows(used):
        delay = policy.delay(used, f"{state.saga_id}:{st.name}:undo")
        again = replace(st, compensation_attempt=st.compensation_attempt + 1, error=event.error)
        command = _compensation(saga, again, again.compensation_attempt, delay)
        return Decision(state.with_step(again), (command,))
    stuck = replace(st, status=StepStatus.COMPENSATION_FAILED, error=event.error)
    reason = f"compensation of step {st.name!r} failed after {used} attempts: {event.error}"
    if state.cause:
        reason += f" (compensating because {state.cause})"
    return Decision(
        replace(
            state.with_step(stuck), status=SagaStatus.FAILED, reason=reason, failed_step=st.name
        )
    )


def _cancel(saga: Saga, state: SagaState, reason: str) -> Decision:
    if state.status is SagaStatus.COMPENSATING:
        return Decision(state, ignored=True)
    if state.status.settled:
        raise InvalidTransition(state.saga_id, state.status, "cancel", "it has already finished")
    if state.pivot_passed:
        raise InvalidTransition(
            state.saga_id,
            state.status,
            "cancel",
            "it passed its pivot step and will run to completion",
        )
    return _begin_compensation(saga, state, f"cancelled: {reason}", None)


def _retry(saga: Saga, state: SagaState) -> Decision:
    if state.status is not SagaStatus.FAILED:
        raise InvalidTransition(
            state.saga_id, state.status, "retry", "only a failed saga can be retried"
        )
    stuck = [s for s in state.steps if s.status is StepStatus.COMPENSATION_FAILED]
    if stuck:
        st = stuck[0]
        again = replace(
            st,
            status=StepStatus.COMPENSATING,
            compensation_attempt=st.compensation_attempt + 1,
            compensation_base=st.compensation_attempt,
        )
        state = replace(
            state.with_step(again),
            status=SagaStatus.COMPENSATING,
            reason=state.cause,
            failed_step=state.cause_step,
        )
        return Decision(state, (_compensation(saga, again, again.compensation_attempt, 0.0),))
    state = replace(state, status=SagaStatus.RUNNING, reason=None, failed_step=None)
    commands: list[RunTask] = []
    for st in state.steps:
        if st.stage == state.stage and st.status is StepStatus.FAILED:
            again = replace(
                st,
                status=StepStatus.RUNNING,
                attempt=st.attempt + 1,
                attempt_base=st.attempt,
                order=None,
            )
            state = state.with_step(again)
            commands.append(_action(saga, again, again.attempt, 0.0))
    if not commands and not state.in_flight:
        return _enter_stage(saga, state, state.stage + 1)
    return Decision(state, tuple(commands))
